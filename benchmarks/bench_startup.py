"""Benchmark: start-up. Launch to first request of a whole ``evalledger run`` process, as the fake
server sees it, against a bare SDK script; and the launch-to-exit time of commands that send nothing.

    python benchmarks/bench_startup.py                  # 9 launches of each case, both bytecode conditions
    python benchmarks/bench_startup.py --repeat 5       # quicker
    python benchmarks/bench_startup.py --bytecode cached --importtime   # also `-X importtime` summaries
    python benchmarks/bench_startup.py --json startup.json              # also write every figure as JSON
    python benchmarks/bench_startup.py --src /tmp/before/src --src src  # two trees, launches interleaved

Every launch is a fresh child process. ``tests/fakeserver.py`` serves on a thread of this process,
which otherwise only waits for the child (``os.wait4``), so the two share the machine as a user's
process and a remote API would not; it answers at once (L = 0). "First request" is the moment the
server reads the first request's body (``time.monotonic()``, one clock for every process on Linux)
minus the moment just before the child was started; the child's CPU time at that moment is read from
``/proc/<pid>/stat`` (10 ms ticks). Total wall time, CPU time and peak RSS come from ``os.wait4``.

``--src`` (repeatable) imports evalledger from another tree's ``src/`` (e.g. one made with
``git archive``); with several, each case's launches alternate between the trees, so that a
comparison is not skewed by what else the machine did meanwhile.

The cases:

* ``run``: ``evalledger run`` of a new 20-row run (``--quiet -c 2``, a fresh ``--output-dir`` and a
  fresh, empty response cache each time): validation, run ID, lock, manifest, status marker, the SDK
  import and its client, then the first request.
* ``bare``: a bare SDK script: ``import openai``, ``AsyncOpenAI(max_retries=0)``, one
  ``chat.completions.create``; the floor for any tool that sends through the SDK.
* ``bare-aiohttp``: the same on the SDK's aiohttp transport (``DefaultAioHttpClient``), which
  evalledger uses (less CPU per request; its import and its TLS context cost start-up time).
* ``resume``: the same ``evalledger run`` again on the complete run: nothing pending, no request.
* ``help``: ``evalledger --help``.
* ``stats``: ``evalledger stats RUN_DIR`` on the 20-record run.

Bytecode (``--bytecode``): ``as-is`` runs with the environment as it is (in this repository's
development setup ``PYTHONDONTWRITEBYTECODE=1`` and an editable install: evalledger's own modules are
compiled from source at every launch, the installed packages load their ``.pyc``); ``cached`` points
``PYTHONPYCACHEPREFIX`` at a directory filled by one untimed launch of each case, so that every
module, evalledger's included, loads from bytecode, as it does when evalledger is installed from a
wheel (pip compiles it at install).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO / "tests"))

from bench_throughput import MODEL, write_dataset  # noqa: E402
from fakeserver import FakeServer, answer_from_marker  # noqa: E402

ROWS = 20
BYTECODE = ("as-is", "cached")
SENDING = ("run", "bare", "bare-aiohttp")
CASES = (*SENDING, "resume", "help", "stats")

BARE = r"""
import asyncio, os, sys
import openai
async def main():
    extra = {}
    if sys.argv[1] == "aiohttp":
        extra["http_client"] = openai.DefaultAioHttpClient()
    client = openai.AsyncOpenAI(max_retries=0, **extra)
    reply = await client.chat.completions.create(
        model="bench-model", max_tokens=16, messages=[{"role": "user", "content": "what is 1 + 0? [[ANSWER:1]]"}])
    assert reply.choices[0].message.content
    await client.close()
asyncio.run(main())
"""


# ------------------------------------------------------------------------------------ one launch
class FirstRequest:
    """The fake server's responder: notes when the first request arrived and the child's CPU then."""

    def __init__(self) -> None:
        self.pid = 0
        self.cpu: float | None = None
        self.lock = threading.Lock()

    def reset(self, pid: int) -> None:
        with self.lock:
            self.pid, self.cpu = pid, None

    def __call__(self, body: dict[str, Any]) -> str:
        with self.lock:
            if self.cpu is None and self.pid:
                self.cpu = _cpu_seconds(self.pid)
        return answer_from_marker(body)


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def launch(argv: list[str], env: dict[str, str], server: FakeServer, first: FirstRequest) -> dict[str, Any]:
    """One child process: launch to first request (if any), to exit; CPU, peak RSS."""
    server.clear_requests()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=err)
        first.reset(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.monotonic() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{' '.join(argv)} exited {proc.returncode}:\n{err.read().decode()[-3000:]}")
    requests = server.requests
    return {"first_request_s": requests[0].received_at - t0 if requests else None,
            "first_request_cpu_s": first.cpu if requests else None, "requests": len(requests),
            "seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024}


class Cases:
    """The command line of each case, with what it needs on disk."""

    def __init__(self, root: Path, server: FakeServer) -> None:
        self.root = root
        self.data = write_dataset(root / "data.jsonl", ROWS)
        self.bare = root / "bare.py"
        self.bare.write_text(BARE)
        self.complete = root / "complete"  # the run that `resume` and `stats` read
        self.env = {**os.environ, "OPENAI_BASE_URL": server.openai_base_url, "OPENAI_API_KEY": "sk-bench",
                    "PYTHONUNBUFFERED": "1"}
        self.n = 0

    def run_argv(self, out: Path) -> list[str]:
        return [sys.executable, "-m", "evalledger", "run", "-d", str(self.data), "-m", MODEL, "--output-dir", str(out),
                "--quiet", "-c", "2"]

    def argv(self, case: str, src: Path | None) -> tuple[list[str], dict[str, str]]:
        """``case``'s command line and environment, evalledger imported from ``src`` (None: the
        installed one). ``run`` gets a fresh output directory and response cache, so that it sends."""
        self.n += 1
        env = {**self.env, "EVALLEDGER_CACHE_DIR": str(self.root / f"cache-{self.n}")}
        if src is not None:  # that tree's evalledger before the installed one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src.resolve()), os.environ.get("PYTHONPATH")]))
        if case == "run":
            return self.run_argv(self.root / f"out-{self.n}"), env
        if case in ("bare", "bare-aiohttp"):
            return [sys.executable, str(self.bare), "aiohttp" if case == "bare-aiohttp" else "default"], env
        if case == "resume":
            return self.run_argv(self.complete), env
        if case == "help":
            return [sys.executable, "-m", "evalledger", "--help"], env
        if case == "stats":
            (run_dir,) = self.complete.iterdir()
            return [sys.executable, "-m", "evalledger", "stats", str(run_dir)], env
        raise ValueError(case)


def with_bytecode(env: dict[str, str], bytecode: str, prefix: Path) -> dict[str, str]:
    env = dict(env)
    if bytecode == "cached":
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(prefix)
    return env


# ------------------------------------------------------------------------------------ -X importtime
IMPORT_LINE = re.compile(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)")


def importtime_summary(stderr: str) -> dict[str, Any]:
    """The sum of every module's own import time, the module count, and the packages that cost most."""
    own: Counter[str] = Counter()
    total = modules = 0
    for line in stderr.splitlines():
        m = IMPORT_LINE.match(line)
        if m:
            modules += 1
            total += int(m.group(1))
            own[m.group(4).split(".")[0]] += int(m.group(1))
    return {"total_s": total / 1e6, "modules": modules,
            "top": [(name, us / 1e6) for name, us in own.most_common(8)]}


def importtime(cases: Cases, case: str, src: Path | None, bytecode: str, prefix: Path) -> dict[str, Any]:
    argv, env = cases.argv(case, src)
    env = with_bytecode(env, bytecode, prefix)
    out = subprocess.run([argv[0], "-X", "importtime", *argv[1:]], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{case} -X importtime exited {out.returncode}:\n{out.stderr[-3000:]}")
    return importtime_summary(out.stderr)


# ------------------------------------------------------------------------------------ the benchmark
def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"launches": len(runs)}
    for key in ("first_request_s", "first_request_cpu_s", "seconds", "cpu_seconds", "max_rss_mb"):
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[key] = {"min": min(values), "median": statistics.median(values), "max": max(values)}
    out["requests"] = sorted({r["requests"] for r in runs})
    return out


def _fmt(s: dict[str, Any], key: str, scale: float = 1.0, digits: int = 2) -> str:
    if key not in s:
        return "-"
    v = s[key]
    return f"{v['min'] * scale:.{digits}f} / {v['median'] * scale:.{digits}f}"


def bench(root: Path, repeat: int, bytecodes: list[str], with_importtime: bool, trees: list[Path | None],
          selected: list[str]) -> dict[str, Any]:
    first = FirstRequest()
    results: dict[str, Any] = {"repeat": repeat, "rows": ROWS, "machine": machine(), "trees": {}}
    names = {str(src or "installed"): src for src in trees}
    with FakeServer(latency=0.0, responder=first) as server:
        cases = Cases(root, server)
        argv, env = cases.argv("run", trees[0])
        argv[argv.index("--output-dir") + 1] = str(cases.complete)
        launch(argv, env, server, first)  # the complete run that `resume` and `stats` read
        prefix = root / "pycache"
        for bytecode in bytecodes:
            runs: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for case in selected:
                for src in trees:
                    if bytecode == "cached":  # fill the bytecode cache (untimed)
                        argv, env = cases.argv(case, src)
                        launch(argv, with_bytecode(env, bytecode, prefix), server, first)
                for _ in range(repeat):
                    for name, src in names.items():  # interleaved: the trees share the machine's moods
                        argv, env = cases.argv(case, src)
                        runs.setdefault((name, case), []).append(
                            launch(argv, with_bytecode(env, bytecode, prefix), server, first))
            for name, src in names.items():
                figures = results["trees"].setdefault(name, {})[bytecode] = {}
                print(f"\n{name}, bytecode {bytecode}   (min / median of {repeat} launches; load average "
                      f"{os.getloadavg()[0]:.1f} now)", flush=True)
                print(f"  {'case':<14}{'first request s':>17}{'CPU then s':>13}{'exit s':>13}{'CPU s':>13}"
                      f"{'RSS MB':>11}{'requests':>9}", flush=True)
                for case in selected:
                    s = figures[case] = summarize(runs[name, case])
                    print(f"  {case:<14}{_fmt(s, 'first_request_s'):>17}{_fmt(s, 'first_request_cpu_s'):>13}"
                          f"{_fmt(s, 'seconds'):>13}{_fmt(s, 'cpu_seconds'):>13}"
                          f"{_fmt(s, 'max_rss_mb', digits=0):>11}{','.join(map(str, s['requests'])):>9}", flush=True)
                if with_importtime:
                    print("  -X importtime (sum of every module's own time; inflated by the measurement itself):",
                          flush=True)
                    figures["importtime"] = {}
                    for case in ("help", "run", "resume", "stats"):
                        if bytecode == "cached" and case not in selected:  # fill the bytecode cache (untimed)
                            argv, env = cases.argv(case, src)
                            launch(argv, with_bytecode(env, bytecode, prefix), server, first)
                        it = figures["importtime"][case] = importtime(cases, case, src, bytecode, prefix)
                        top = ", ".join(f"{package} {t:.3f}" for package, t in it["top"])
                        print(f"    {case:<8}{it['total_s']:.3f} s, {it['modules']} modules: {top}", flush=True)
    return results


def machine() -> dict[str, Any]:
    versions = {}
    for pkg in ("openai", "anthropic", "aiohttp"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return {"cores": os.cpu_count(), "python": platform.python_version(), **versions, "date": time.strftime("%Y-%m-%d")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=9, help="launches of each case (default 9)")
    ap.add_argument("--bytecode", choices=[*BYTECODE, "both"], default="both")
    ap.add_argument("--importtime", action="store_true", help="also one `-X importtime` launch of each command")
    ap.add_argument("--json", type=Path, help="write every figure here as JSON")
    ap.add_argument("--src", type=Path, action="append",
                    help="import evalledger from this directory (a tree's src/); repeat to compare trees")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="evalledger-bench-startup-"))
    try:
        bytecodes = list(BYTECODE) if args.bytecode == "both" else [args.bytecode]
        trees: list[Path | None] = list(args.src) if args.src else [None]
        results = bench(root, args.repeat, bytecodes, args.importtime, trees, args.cases.split(","))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
