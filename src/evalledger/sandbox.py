"""Run a model-written Python program in a child process with limits (HumanEval's pass@1).

What the child gets:

* ``python -I`` (isolated mode: no ``PYTHON*`` variables, no user site-packages, no script or
  current directory on ``sys.path``) with a scrubbed environment: only ``PATH`` and ``LANG``, so
  API keys and tokens of the parent never reach model-written code;
* a fresh temporary directory as its working directory, removed afterwards;
* a wall-clock timeout, after which its whole process group is killed with SIGKILL;
* resource limits set with ``resource.setrlimit`` between fork and exec (``preexec_fn``): CPU
  seconds, address space (memory), size of any file it writes, number of processes, and no core
  dumps;
* a small prelude that runs before the program and replaces the process-creating and signalling
  functions (``os.fork``, ``os.system``, ``subprocess``, ``os.kill`` …) with ones that raise.

**This is defence in depth against accidents, not a security boundary.** The prelude is plain
Python that a determined program can undo (``ctypes`` can call ``fork`` directly), and Linux does
not enforce ``RLIMIT_NPROC`` for root, so as root the prelude is the only thing stopping a fork.
The child can still read any file the user can and open network connections. Run untrusted code
only inside a container or VM you are prepared to lose; that is why execution is off unless the
user passes ``--allow-code-execution``.

:func:`run_python_async` never blocks the event loop (the child is an asyncio subprocess), so a
run keeps sending requests while tests execute. :func:`run_python` is the blocking form.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import resource
import shutil
import signal
import stat
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ExecutionResult",
    "SandboxLimits",
    "run_python",
    "run_python_async",
    "sandbox_env",
]

MiB = 1024 * 1024

# How much of the child's output a result keeps: enough for a traceback, small enough for a record.
TAIL_CHARS = 2000

# What the child may see of the environment. LANG keeps its stdout UTF-8; PATH is a fixed
# minimal one rather than the parent's, which may point into a user's tool directories.
_SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class SandboxLimits:
    """Limits for one child process.

    ``timeout_s`` is wall-clock time (catches sleeping or blocked programs); ``cpu_seconds`` is
    ``RLIMIT_CPU`` (the kernel stops a busy loop even if our timer is late). ``memory_bytes`` is
    ``RLIMIT_AS``, ``file_size_bytes`` is ``RLIMIT_FSIZE`` (it also caps the captured stdout and
    stderr, which go to files), ``max_processes`` is ``RLIMIT_NPROC``. ``RLIMIT_NPROC`` counts
    every process and thread of the user, not only the child's, so any small value means "no
    children" in practice; root is exempt from it (see the module docstring).
    """

    timeout_s: float = 10.0
    cpu_seconds: int = 10
    memory_bytes: int = 512 * MiB
    file_size_bytes: int = 10 * MiB
    max_processes: int = 1

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.cpu_seconds < 1:
            raise ValueError("timeout_s must be positive and cpu_seconds at least 1")
        if self.memory_bytes < 64 * MiB:
            # Below this the interpreter itself cannot start, and every program would "fail".
            raise ValueError("memory_bytes must be at least 64 MiB")
        if self.file_size_bytes < 1 or self.max_processes < 0:
            raise ValueError("file_size_bytes must be at least 1 and max_processes not negative")


@dataclass(frozen=True)
class ExecutionResult:
    """How one program ended.

    ``passed`` is true iff it exited with status 0 before the timeout. ``exit_code`` is the
    process's return code (negative: killed by that signal, e.g. -9 after a timeout, -24 for
    SIGXCPU), ``None`` only if it could not be collected. ``stdout`` and ``stderr`` are the last
    :data:`TAIL_CHARS` characters of each.
    """

    passed: bool
    exit_code: int | None
    timed_out: bool
    stdout: str
    stderr: str
    duration_s: float

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict (for a record's ``extra``)."""
        return {
            "passed": self.passed,
            "exit_code": self.exit_code,
            "timed_out": self.timed_out,
            "duration_s": round(self.duration_s, 3),
            "stdout_tail": self.stdout,
            "stderr_tail": self.stderr,
        }


# Runs in the child before the program. It is passed with -c, so it is not a file the program can
# see, and it replaces the functions that create processes or signal other processes. The
# program is then compiled from its file (so tracebacks name it) and run in a fresh namespace.
_PRELUDE = r"""
import os, posix, sys

def _blocked(*args, **kwargs):
    raise PermissionError("creating or signalling processes is disabled in the evalledger sandbox")

for _module in (os, posix):
    for _name in ("fork", "forkpty", "vfork", "system", "popen", "posix_spawn", "posix_spawnp",
                  "execv", "execve", "execl", "execle", "execlp", "execlpe", "execvp", "execvpe",
                  "spawnl", "spawnle", "spawnlp", "spawnlpe", "spawnv", "spawnve", "spawnvp",
                  "spawnvpe", "kill", "killpg"):
        # (not register_at_fork: it creates nothing, and `import random` calls it at import time)
        if hasattr(_module, _name):
            setattr(_module, _name, _blocked)
import _posixsubprocess
_posixsubprocess.fork_exec = _blocked  # what subprocess and multiprocessing fork through
try:
    import pty
    pty.fork = _blocked
except ImportError:
    pass
del _module, _name

_path = sys.argv[1]
_run_name = sys.argv[2]
sys.argv = [_path]
with open(_path, encoding="utf-8") as _f:
    _code = compile(_f.read(), _path, "exec")
del _f
_globals = {"__name__": _run_name, "__file__": _path, "__builtins__": __builtins__}
del _path, _run_name
exec(_code, _globals)
"""


def sandbox_env() -> dict[str, str]:
    """The whole environment a child gets: a minimal ``PATH`` and a UTF-8 ``LANG``, nothing else."""
    return {"PATH": _SAFE_PATH, "LANG": "C.UTF-8"}


def _limit_child(limits: SandboxLimits):  # type: ignore[no-untyped-def]
    """The ``preexec_fn``: set the rlimits in the child between fork and exec.

    It only calls ``resource.setrlimit`` (a C function, module imported at the top), because
    code run there must not take locks that another thread of the parent might have held at fork.
    """

    def lower(which: int, soft: int, hard: int) -> None:
        # Only ever lower a limit: if the parent already runs under a tighter hard limit (a
        # container, ulimit), raising it would fail and every program would error out.
        _cur_soft, cur_hard = resource.getrlimit(which)
        if cur_hard != resource.RLIM_INFINITY:
            soft, hard = min(soft, cur_hard), min(hard, cur_hard)
        resource.setrlimit(which, (soft, hard))

    def apply() -> None:
        cpu = limits.cpu_seconds
        # Soft CPU limit sends SIGXCPU; the hard one a second later is SIGKILL, which no program can catch.
        lower(resource.RLIMIT_CPU, cpu, cpu + 1)
        lower(resource.RLIMIT_AS, limits.memory_bytes, limits.memory_bytes)
        lower(resource.RLIMIT_FSIZE, limits.file_size_bytes, limits.file_size_bytes)
        lower(resource.RLIMIT_CORE, 0, 0)
        lower(resource.RLIMIT_NPROC, limits.max_processes, limits.max_processes)

    return apply


def _tail(path: Path) -> str:
    """The last :data:`TAIL_CHARS` characters of a file the child wrote (bytes decoded leniently)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4 * TAIL_CHARS))
            data = f.read()
    except OSError:
        return ""
    return data.decode("utf-8", "replace")[-TAIL_CHARS:]


def _remove_tree(root: Path) -> None:
    """Delete the sandbox directory even if the program made parts of it read-only."""

    def make_writable_and_retry(func, path, _exc):  # type: ignore[no-untyped-def]
        try:
            parent = os.path.dirname(path)
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
            func(path)
        except OSError:
            pass

    shutil.rmtree(root, onerror=make_writable_and_retry)


def _kill_group(pid: int) -> None:
    """SIGKILL the child's process group (the child leads it: ``start_new_session``)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # already gone


async def run_python_async(
    source: str,
    limits: SandboxLimits | None = None,
    *,
    run_name: str = "__main__",
) -> ExecutionResult:
    """Run ``source`` as a Python program in a limited child process; see the module docstring.

    ``run_name`` is the program's ``__name__``: HumanEval passes something other than
    ``"__main__"`` so that a model's ``if __name__ == "__main__":`` demo block does not run,
    as in the reference harness. The temporary directory is removed and the process group
    killed whatever happens, including cancellation of the awaiting task.
    """
    limits = limits or SandboxLimits()
    root = Path(tempfile.mkdtemp(prefix="evalledger-sandbox-"))
    try:
        # The program and its captured output live beside, not inside, the working directory, so
        # the program starts in an empty directory. Output goes to files, not pipes: RLIMIT_FSIZE
        # then caps it too, and a program printing without end cannot fill the parent's memory.
        workdir = root / "work"
        workdir.mkdir()
        program = root / "program.py"
        program.write_text(source, encoding="utf-8")
        out_path, err_path = root / "stdout", root / "stderr"
        t0 = time.monotonic()
        timed_out = False
        # Opening two empty local temp files does not stall the loop in any way that matters.
        with open(out_path, "wb") as out, open(err_path, "wb") as err:  # noqa: ASYNC230
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-I", "-c", _PRELUDE, str(program), run_name,
                stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                cwd=workdir, env=sandbox_env(), close_fds=True,
                start_new_session=True,  # its own process group, so one killpg reaches everything
                preexec_fn=_limit_child(limits),
            )
            try:
                try:
                    await asyncio.wait_for(proc.wait(), timeout=limits.timeout_s)
                except TimeoutError:
                    timed_out = True
            finally:
                # Also after a normal exit or a cancellation: nothing the program started may outlive it.
                _kill_group(proc.pid)
                if proc.returncode is None:
                    await asyncio.shield(proc.wait())
        duration = time.monotonic() - t0
        exit_code = proc.returncode
        return ExecutionResult(
            passed=(exit_code == 0 and not timed_out),
            exit_code=exit_code,
            timed_out=timed_out,
            stdout=_tail(out_path),
            stderr=_tail(err_path),
            duration_s=duration,
        )
    finally:
        _remove_tree(root)


def run_python(source: str, limits: SandboxLimits | None = None, *, run_name: str = "__main__") -> ExecutionResult:
    """Blocking form of :func:`run_python_async`.

    Safe to call from inside a running event loop's thread too: it then runs in a helper thread
    with its own loop (the caller's loop is blocked meanwhile, so async code should await
    :func:`run_python_async` instead).
    """
    def run_in_new_loop() -> ExecutionResult:
        return asyncio.run(run_python_async(source, limits, run_name=run_name))

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return run_in_new_loop()
    # asyncio.run refuses to nest inside a running loop; a helper thread has none.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(run_in_new_loop).result()
