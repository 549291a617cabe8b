"""Helpers shared by the end-to-end tests: datasets with known answers, CLI subprocesses, ledger reads."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from evalledger import UsageError

REPO = Path(__file__).resolve().parents[1]


def write_qa_dataset(path: Path, n: int, *, with_ids: bool = True, start: int = 0) -> Path:
    """A GSM8K-shaped jsonl whose every question carries a ``[[ANSWER:k]]`` marker.

    The fake server's default responder answers with the marker's value, so each sample is
    answered correctly and ``count_for("[[ANSWER:k]]")`` counts the requests paid for sample k.
    """
    with open(path, "w", encoding="utf-8") as f:
        for i in range(start, start + n):
            row: dict[str, Any] = {"question": f"Question {i}: what is {i} + 0? [[ANSWER:{i}]]", "answer": f"{i} + 0 = {i}\n#### {i}"}
            if with_ids:
                row = {"id": f"s{i:05d}", **row}
            f.write(json.dumps(row) + "\n")
    return path


def run_config(server: Any, data: Path | str, out: Path, **kw: Any) -> Any:
    """A RunConfig for ``data`` against the fake server: quiet, concurrency 2, short retry waits."""
    from evalledger.config import RunConfig

    base: dict[str, Any] = dict(dataset=str(data), model="openai/test-model", output_dir=out,
                                base_url=server.openai_base_url, api_key="sk-test", quiet=True, concurrency=2,
                                max_retry_wait=0.05)
    base.update(kw)
    return RunConfig(**base)


def marker(i: int) -> str:
    return f"[[ANSWER:{i}]]"


def cli_env(server: Any, **extra: str) -> dict[str, str]:
    """Environment for a CLI subprocess pointed at the fake server through the SDKs' own variables."""
    env = dict(os.environ)
    env.update(
        OPENAI_BASE_URL=server.openai_base_url,
        OPENAI_API_KEY="sk-test",
        ANTHROPIC_BASE_URL=server.anthropic_base_url,
        ANTHROPIC_API_KEY="sk-ant-test",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``python -m evalledger ARGS`` in a subprocess, output captured."""
    return subprocess.run([sys.executable, "-m", "evalledger", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


def popen_cli(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "evalledger", *args], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_many(argvs: list[list[str]], env: dict[str, str], cwd: Path, timeout: float = 120,
             at_once: int = 8) -> list[subprocess.CompletedProcess[str]]:
    """CLI invocations, ``at_once`` at a time (start-up dominates; the machine has 2 cores)."""
    done: list[subprocess.CompletedProcess[str]] = []
    for i in range(0, len(argvs), at_once):
        batch = argvs[i:i + at_once]
        procs = [popen_cli(a, env, cwd=cwd) for a in batch]
        try:
            for a, p in zip(batch, procs):
                out, err = p.communicate(timeout=timeout)
                done.append(subprocess.CompletedProcess(a, p.returncode, out, err))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    return done


def read_lines(path: Path) -> tuple[list[dict[str, Any]], bytes]:
    """All complete records of a results file (strictly parsed), and the bytes after the last newline."""
    data = path.read_bytes()
    cut = data.rfind(b"\n") + 1
    records = [json.loads(line) for line in data[:cut].splitlines()]
    return records, data[cut:]


def all_records(run_dir: Path) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in sorted(run_dir.glob("results*.jsonl")):
        recs, tail = read_lines(p)
        assert tail == b"", f"{p} has a partial last line"
        out.extend(recs)
    return out


def only_run_dir(output_dir: Path) -> Path:
    dirs = [d for d in output_dir.iterdir() if d.is_dir() and ".old-" not in d.name]
    assert len(dirs) == 1, dirs
    return dirs[0]


def line_count(path: Path) -> int:
    """Newline-terminated lines in a file (0 if it does not exist yet)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for(predicate: Any, timeout: float, what: str, proc: Any = None) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` on timeout or if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the CLI exited ({proc.returncode}) before {what}:\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


@contextlib.contextmanager
def tiny_fs(tmp_path: Path, size: str) -> Any:
    """A tmpfs of ``size`` mounted inside tmp_path (needs root; skips otherwise)."""
    import pytest

    mnt = tmp_path / f"fs-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def assert_error_at_line(load: Any, path: Path, line: int, fragments: list[str]) -> None:
    """``load(path)`` raises a UsageError whose message starts ``<path> line <line>: `` and holds
    every fragment (the config files' rule: a mistake names the file, the line and what is allowed)."""
    with pytest.raises(UsageError) as caught:
        load(path)
    message = caught.value.message
    assert message.startswith(f"{path} line {line}: "), message
    for fragment in fragments:
        assert fragment in message, message


def settle_requests(server: Any, quiet: float = 1.0, timeout: float = 20.0) -> None:
    """Wait until the fake server has answered everything and logged no new request for ``quiet``
    seconds: requests a killed client had already sent can reach the server's log late on a busy
    machine, and must not be counted as the next run's."""
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        count = server.request_count
        if count == seen and server.in_flight == 0:
            return
        seen = count
        time.sleep(quiet)


def kill_9_when(args: list[str], env: dict[str, str], cwd: Path, predicate: Any, timeout: float, what: str,
                pause: float = 0.0) -> None:
    """Start ``evalledger`` with ``args``, wait until ``predicate()`` holds (``what``: for the
    time-out message), wait ``pause`` seconds more, then kill -9 it while it is still running."""
    proc = popen_cli(args, env, cwd=cwd)
    try:
        wait_for(predicate, timeout, what, proc)
        time.sleep(pause)
        assert proc.poll() is None, f"the run finished before the kill: {proc.communicate()[1]}"
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
