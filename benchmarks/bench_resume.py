"""Benchmark: resuming a complete run of 1,000,000 records, launch to exit, with peak RSS.

    python benchmarks/bench_resume.py                      # 1,000,000 records (~4 min to build, once)
    python benchmarks/bench_resume.py --records 100000     # a quick look
    python benchmarks/bench_resume.py --repeat 3           # each case three times
    python benchmarks/bench_resume.py --only own-warm      # one case (see CASES)
    python benchmarks/bench_resume.py --no-bytecode        # without compiled bytecode (default: compiled, as installed)

A "resume" is the very command that made the run, run again on the complete run: it must send no
request and exit 0. Each case times that command as a child process from launch to exit (wall time,
CPU time and peak RSS from ``os.wait4``), and, in a second child, the ledger's own part alone: the
writer's open (lock, torn-tail and garbage-line checks) and the resume scan (``scan_ledger``), after
the imports. The difference between the two is start-up, the dataset check and the rest of the run
session.

The cases:

* ``own-cold``: the runner's own lines (:func:`evalledger.ledger.encode_lines`), no ``<run>/.cache``
  (after a crash that left no index, or a deleted cache): the dataset is validated in full and every
  record is read; the resume leaves its caches behind.
* ``own-warm``: the same command again, with what ``own-cold`` left (the resume index, the dataset index).
* ``foreign-cold``: the same records rewritten by another tool, ``json.dumps(record)`` line by line
  (default spacing ``", "`` and ``": "``, Python's ``ensure_ascii``), no ``.cache``.
* ``sorted-cold``: the same with ``json.dumps(record, sort_keys=True)`` (keys in another order).

The ledger is built once and cached in ``--dir`` (default ``/tmp/evalledger-bench-resume-<N>``):
a dataset of N rows, a real run of its first 200 samples against ``tests/fakeserver.py`` (the
manifest, and 200 real records used as templates), then N records in the runner's writer format
(``results.jsonl``: one unsharded writer; 0.5 % of the samples have an error record before their
ok one). Every case resets the run directory to that state (its results file, no other leftovers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import MODEL, Server, write_dataset  # noqa: E402

CASES = ("own-cold", "own-warm", "foreign-cold", "sorted-cold")
SEED_SAMPLES = 200  # the real run's samples: its records are the templates
RUN_FILES = ("results.jsonl", "manifest.json")  # what a case starts from (everything else is removed)


# ------------------------------------------------------------------------------------ building
def build(root: Path, n: int) -> dict[str, Path]:
    """The dataset, the run directory and the three results files (cached in ``root``)."""
    data = root / "data.jsonl"
    base = root / "base"  # the run as built: manifest + results.jsonl in the writer's own format
    variants = {"own": root / "results.own.jsonl", "foreign": root / "results.foreign.jsonl",
                "sorted": root / "results.sorted.jsonl"}
    done = root / "BUILT"
    if done.exists():
        run_dir = Path(done.read_text().strip())
        return {"data": data, "run_dir": run_dir, **variants}
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t = time.perf_counter()
    write_dataset(data, n)
    srv = Server(0.0)
    try:
        out = subprocess.run(command(data, base, srv.openai_base_url) + ["--limit", str(SEED_SAMPLES)],
                             capture_output=True, text=True)
    finally:
        srv.stop()
    if out.returncode != 0:
        raise RuntimeError(f"the seed run failed:\n{out.stderr[-3000:]}")
    run_dir = next(p for p in base.iterdir() if p.is_dir())
    templates = [json.loads(line) for line in (run_dir / "results.jsonl").read_bytes().splitlines()]
    write_ledgers(templates, n, variants)
    done.write_text(str(run_dir))
    size = variants["own"].stat().st_size
    print(f"built in {time.perf_counter() - t:.0f}s: {n:,} records, {size / 1e6:.0f} MB of results → {root}")
    return {"data": data, "run_dir": run_dir, **variants}


def write_ledgers(templates: list[dict], n: int, paths: dict[str, Path]) -> None:
    """``n`` samples' records shaped like the templates, in the three formats."""
    import random

    from evalledger.ledger import encode_lines

    rng = random.Random(0)
    files = {k: open(p, "wb") for k, p in paths.items()}
    try:
        batch: list[dict] = []
        for i in range(n):
            rec = _record_for(templates[i % len(templates)], i, rng)
            if rng.random() < 0.005:  # an error first, then the ok record that completes it
                batch.append({**rec, "status": "error", "correct": None, "prompt": None, "response": None,
                              "prediction": None, "target": None, "score": None,
                              "error": {"type": "RateLimitError", "message": "HTTP 429: rate limited",
                                        "retryable": True, "status_code": 429}})
            batch.append(rec)
            if len(batch) >= 10000 or i == n - 1:
                files["own"].write(encode_lines(batch))
                files["foreign"].write("".join(json.dumps(r) + "\n" for r in batch).encode())
                files["sorted"].write("".join(json.dumps(r, sort_keys=True) + "\n" for r in batch).encode())
                batch = []
    finally:
        for f in files.values():
            f.close()


def _record_for(template: dict, i: int, rng) -> dict:
    sid = f"q{i:07d}"
    rec = json.loads(json.dumps(template))
    rec.update(sample_id=sid, input_hash=f"{i:016x}", request_ids=[f"chatcmpl-{i:x}"],
               latency_s=round(rng.uniform(0.001, 0.5), 4), queued_s=round(rng.uniform(0, 0.01), 4),
               finished_at=f"2026-12-08T10:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z")
    for m in rec.get("prompt") or []:
        if m.get("role") == "user":
            m["content"] = f"Question {i}: what is {i} + 0? [[ANSWER:{i}]]"
    rec["response"] = f"The answer is {i}.\n#### {i}"
    rec["prediction"] = rec["target"] = str(i)
    rec["correct"] = rec["score"] = rng.random() < 0.9
    usage = {"input_tokens": rng.randint(40, 400), "output_tokens": rng.randint(5, 300)}
    cost = round((usage["input_tokens"] * 0.15 + usage["output_tokens"] * 0.6) / 1e6, 9)  # a priced model's
    rec.update(usage=usage, cost_usd=cost, paid={**usage, "cost_usd": cost})
    return rec


def reset(run_dir: Path, results: Path) -> None:
    """The run directory as built, with ``results`` as its results file and nothing else the resumes left."""
    for p in run_dir.iterdir():
        if p.name == "manifest.json":
            continue
        if p.is_dir():
            shutil.rmtree(p)
        else:
            p.unlink()
    shutil.copyfile(results, run_dir / "results.jsonl")
    with open(run_dir / "results.jsonl", "rb") as f:  # on disk, as its writer leaves it (no dirty pages)
        os.fsync(f.fileno())


# ------------------------------------------------------------------------------------ measuring
def command(data: Path, out: Path, base_url: str) -> list[str]:
    """The run command (the resume is the same command again)."""
    return [sys.executable, "-m", "evalledger", "run", "--dataset", str(data), "--model", MODEL,
            "--base-url", base_url, "--output-dir", str(out), "--concurrency", "64", "--quiet",
            "--allow-endpoint-change"]


ENV: dict[str, str] = dict(os.environ)  # the children's (--src sets PYTHONPATH)


def timed(cmd: list[str]) -> dict:
    """Run ``cmd``; wall seconds launch to exit, CPU seconds and peak RSS (MB) of the child."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    # wait4 gives this child's own rusage (the process and the children it waited for)
    out_bytes, err_bytes = b"", b""
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out_bytes, err_bytes = proc.stdout.read(), proc.stderr.read()  # type: ignore[union-attr]
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"seconds": wall, "cpu_seconds": usage.ru_utime + usage.ru_stime, "max_rss_mb": usage.ru_maxrss / 1024,
            "exit": proc.returncode, "stdout": out_bytes.decode(errors="replace"),
            "stderr": err_bytes.decode(errors="replace")}


LEDGER_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from evalledger.ledger import RunLedger, scan_ledger
run_dir, n = Path(sys.argv[1]), int(sys.argv[2])
known = frozenset(f"q{i:07d}" for i in range(n))  # the dataset's ids (not the ledger's work)
t, c = time.perf_counter(), time.process_time()
ledger = RunLedger(run_dir).open_writer()
opened = time.perf_counter()
scan = scan_ledger(run_dir, known, own=ledger.results_path)
ledger.close()
print(json.dumps({"seconds": time.perf_counter() - t, "open_seconds": opened - t,
                  "cpu_seconds": time.process_time() - c, "completed": len(scan.completed), "records": scan.records,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def ledger_part(run_dir: Path, n: int) -> dict:
    """The writer's open and the resume scan alone, in a fresh interpreter, after the imports."""
    out = subprocess.run([sys.executable, "-c", LEDGER_CHILD, str(run_dir), str(n)], capture_output=True, text=True,
                         env=ENV)
    if out.returncode != 0:
        raise RuntimeError(f"ledger part failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_case(case: str, built: dict[str, Path], n: int, base_url: str, srv: Server, ledger: bool) -> dict:
    run_dir: Path = built["run_dir"]
    variant, when = case.split("-")
    if when == "cold":
        reset(run_dir, built[variant])
    elif not (run_dir / ".cache").exists():  # a warm case needs what the cold one left
        reset(run_dir, built[variant])
        timed(command(built["data"], run_dir.parent, base_url))
    before = srv.stats()["request_count"]
    r = timed(command(built["data"], run_dir.parent, base_url))
    sent = srv.stats()["request_count"] - before
    if r["exit"] != 0 or sent:
        raise RuntimeError(f"{case}: exit {r['exit']}, {sent} requests sent; stderr:\n{r['stderr'][-3000:]}")
    row = {"case": case, "seconds": r["seconds"], "cpu_seconds": r["cpu_seconds"], "max_rss_mb": r["max_rss_mb"]}
    if ledger:
        # the same state again for the ledger part: cold without the resume index, warm with it
        if when == "cold":
            shutil.rmtree(run_dir / ".cache" / "resume-v1", ignore_errors=True)
        part = ledger_part(run_dir, n)
        row.update(ledger_seconds=part["seconds"], ledger_open_seconds=part["open_seconds"],
                   ledger_rss_mb=part["max_rss_mb"], completed=part["completed"])
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="where the built run is cached "
                    "(default /tmp/evalledger-bench-resume-<records>)")
    ap.add_argument("--rebuild", action="store_true", help="build the run again even if it is cached")
    ap.add_argument("--only", nargs="+", choices=CASES, default=list(CASES))
    ap.add_argument("--repeat", type=int, default=1, help="run each case this many times")
    ap.add_argument("--no-ledger-part", action="store_true", help="skip timing the ledger's part alone")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    ap.add_argument("--src", type=Path, default=None,
                    help="time the evalledger in this source tree (its src/ directory) instead of the installed one")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="time without compiled bytecode (PYTHONDONTWRITEBYTECODE, as a development checkout may run)")
    args = ap.parse_args()
    if args.src:
        ENV["PYTHONPATH"] = str(args.src.resolve())
    if not args.no_bytecode:
        # As a package installed from a wheel runs: its bytecode compiled (pip compiles it).
        ENV.pop("PYTHONDONTWRITEBYTECODE", None)
        package = subprocess.run([sys.executable, "-c", "import evalledger, os; print(os.path.dirname(evalledger.__file__))"],
                                 capture_output=True, text=True, env=ENV, check=True).stdout.strip()
        subprocess.run([sys.executable, "-m", "compileall", "-q", package], env=ENV, check=True)
    root = args.dir or Path(f"/tmp/evalledger-bench-resume-{args.records}")
    if args.rebuild:
        shutil.rmtree(root, ignore_errors=True)
    built = build(root, args.records)
    print(f"machine: {os.cpu_count()} cores; python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}; "
          f"{args.records:,} records, {built['own'].stat().st_size / 1e6:.0f} MB (own format)")
    print(f"{'case':<14}{'wall s':>8}{'cpu s':>8}{'RSS MB':>8}   {'ledger s':>9}{'of it open':>11}{'RSS MB':>8}")
    rows = []
    srv = Server(0.0)  # the endpoint of the command; a resume of a complete run must send it nothing
    try:
        for _ in range(args.repeat):
            for case in args.only:
                row = run_case(case, built, args.records, srv.openai_base_url, srv, not args.no_ledger_part)
                rows.append(row)
                ledger = (f"   {row['ledger_seconds']:>9.2f}{row['ledger_open_seconds']:>11.2f}"
                          f"{row['ledger_rss_mb']:>8.0f}" if "ledger_seconds" in row else "")
                print(f"{case:<14}{row['seconds']:>8.2f}{row['cpu_seconds']:>8.2f}{row['max_rss_mb']:>8.0f}{ledger}",
                      flush=True)
    finally:
        srv.stop()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
