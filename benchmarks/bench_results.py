"""Benchmark: load_results, get_stats and report on a large run (default 1,000,000 records).

    python benchmarks/bench_results.py                    # 1,000,000 records in 4 shards
    python benchmarks/bench_results.py --records 100000   # quicker
    python benchmarks/bench_results.py --no-orjson        # also time the stdlib-json fallback

Writes a synthetic run (records shaped like the runner's: prompt, response, usage, paid, ~0.9 kB per
line; 1 % error records, 0.5 % samples retried after an error) with the real CheckpointManager,
then times each reader in a fresh subprocess so that its peak RSS is its own. Targets from
Targets: load_results <= 10 s and <= 2 GB RSS; report <= 30 s; get_stats <= 5 s.

Each reader is timed three ways: "cold" with the columnar cache turned off
(EVALLEDGER_SCAN_CACHE=off: every record parsed), "first" with the cache on but empty (a full
parse plus writing <run_dir>/.cache/), and "warm" with the cache written by the previous read
(what every later read of a finished run costs; a live run adds only the parse of its new tail).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT = ("Solve the following math problem step by step. After your reasoning, end your response with a final "
          "line of the form '#### <number>', where <number> is only the final numerical answer, without units.")


def make_run(run_dir: Path, n: int, shards: int = 4, seed: int = 0) -> None:
    """Write ``n`` samples' records into ``shards`` shard files of a new run directory."""
    from evalledger.fsio import write_json_atomic
    from evalledger.readers import CheckpointManager

    rng = random.Random(seed)
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "manifest.json", {
        "run_id": run_dir.name, "config": {"model": "openai/gpt-4o-mini"}, "task": "qa",
        "dataset": {"name": "synthetic"}, "sample_count": n})
    writers = [CheckpointManager(run_dir, (k, shards)).open_writer() for k in range(1, shards + 1)]
    batch: list[list[dict]] = [[] for _ in range(shards)]
    for i in range(n):
        k = i % shards
        sid = f"q{i:07d}"
        q = f"Question {i}: a farmer has {rng.randint(2, 999)} apples and sells {rng.randint(1, 99)} of them. How many are left?"
        ans = str(rng.randint(0, 999))
        lat = round(rng.lognormvariate(0, 0.5), 4)
        usage = {"input_tokens": rng.randint(80, 200), "output_tokens": rng.randint(20, 120)}
        cost = round(rng.uniform(1e-5, 1e-4), 7)
        base = {"sample_id": sid, "attempts": 1, "shard": f"{k + 1}/{shards}", "model": "openai/gpt-4o-mini",
                "task": "qa", "input_hash": f"{i:016x}", "usage": usage, "cost_usd": cost,
                "paid": {**usage, "cost_usd": cost},  # a single-turn task's record bills its own usage
                "latency_s": lat, "request_ids": [f"req_{i:x}"],
                "started_at": "2026-11-23T10:00:00.000Z", "finished_at": f"2026-11-23T10:{(i // 60000) % 60:02d}:{(i // 1000) % 60:02d}.{i % 1000:03d}Z"}
        ok = {**base, "status": "ok", "prompt": [{"role": "system", "content": PROMPT}, {"role": "user", "content": q}],
              "response": f"Let me think. The farmer starts with some apples and sells some.\n#### {ans}",
              "prediction": ans, "target": ans if rng.random() < 0.7 else "0", "error": None}
        ok["score"] = ok["correct"] = ok["prediction"] == ok["target"]
        err = {**base, "status": "error", "prompt": None, "response": None, "prediction": None, "target": None,
               "score": None, "correct": None,
               "error": {"type": "RateLimitError", "message": "HTTP 429: rate limited", "retryable": True, "status_code": 429}}
        u = rng.random()
        if u < 0.01:
            batch[k].append(err)
        elif u < 0.015:
            batch[k] += [err, ok]  # retried after an error: the ok record wins
        else:
            batch[k].append(ok)
        if len(batch[k]) >= 5000:
            writers[k].append_records(batch[k], fsync=False)
            batch[k] = []
    for w, b in zip(writers, batch):
        w.append_records(b)
        w.close()


CHILD = r"""
import json, resource, sys, time
if {no_orjson}:
    sys.modules["orjson"] = None  # the stdlib-json fallback, as without the optional package
t = time.perf_counter()
import evalledger
from evalledger import get_stats, load_results
from evalledger.readers.html import write_report
what, run = sys.argv[1], sys.argv[2]
t, c = time.perf_counter(), time.process_time()
if what == "load_results":
    df = load_results(run); rows = len(df)
elif what == "get_stats":
    rows = get_stats(run)["completed_samples"]
else:
    write_report(run, sys.argv[3]); rows = 1
print(json.dumps({{"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "rows": rows,
                  "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(what: str, run_dir: Path, *, no_orjson: bool = False, cache: bool = True) -> dict:
    """Time one reader in a fresh interpreter (import time excluded); returns seconds, rows, max RSS."""
    code = CHILD.format(no_orjson=no_orjson)
    env = {**os.environ, "EVALLEDGER_SCAN_CACHE": "on" if cache else "off"}
    out = subprocess.run([sys.executable, "-c", code, what, str(run_dir), str(run_dir.parent / "report.html")],
                         capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dir", type=Path, default=None, help="Where to build the run (default: a temp dir).")
    ap.add_argument("--no-orjson", action="store_true", help="Also time the stdlib-json fallback.")
    args = ap.parse_args()
    root = args.dir or Path(tempfile.mkdtemp(prefix="evalledger-bench-"))
    run_dir = root / "bench_run"
    if not run_dir.exists():
        t = time.perf_counter()
        make_run(run_dir, args.records)
        size = sum(p.stat().st_size for p in run_dir.glob("results*.jsonl"))
        print(f"wrote {args.records:,} samples ({size / 1e6:.0f} MB) in {time.perf_counter() - t:.0f}s → {run_dir}")
    variants = [False, True] if args.no_orjson else [False]
    # CPU seconds as well as wall seconds: on a shared machine the wall clock also measures the neighbours.
    print(f"{'reader':<14}{'parser':<9}{'cache':<7}{'seconds':>9}{'cpu s':>8}{'max RSS MB':>12}{'rows':>11}")

    def show(what: str, parser: str, cache: str, m: dict) -> None:
        print(f"{what:<14}{parser:<9}{cache:<7}{m['seconds']:>9.1f}{m['cpu_seconds']:>8.1f}"
              f"{m['max_rss_mb']:>12.0f}{m['rows']:>11,}", flush=True)

    for no_orjson in variants:
        parser = "json" if no_orjson else "orjson"
        for what in ("load_results", "get_stats", "report"):
            show(what, parser, "cold", measure(what, run_dir, no_orjson=no_orjson, cache=False))
    shutil.rmtree(run_dir / ".cache", ignore_errors=True)
    show("load_results", "orjson", "first", measure("load_results", run_dir))
    for what in ("load_results", "get_stats", "report"):
        show(what, "orjson", "warm", measure(what, run_dir))
    print(f"cpu: {os.cpu_count()} cores; python {sys.version.split()[0]}; load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
