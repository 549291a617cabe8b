"""Benchmark: ``--workers N``, one run in N processes: samples/s and CPU per request for N = 1 and 2.

    python benchmarks/bench_workers.py                  # N = 1, 2 at C = 256, L = 0.2 s, 4,000 samples
    python benchmarks/bench_workers.py --n 2000 --workers 1 2 3 --rpm 60000

The harness is ``bench_throughput.py``'s: ``tests/fakeserver.py`` in its own process (its CPU is not
counted against evalledger), each case in a fresh interpreter, the clock started after the imports.
A case's CPU is the run's whole: the parent's plus its worker processes' (``RUSAGE_CHILDREN``: the
workers are its children and are reaped before it returns), per request sent. Each worker is a new
interpreter that imports evalledger and the SDK (about a second of CPU each), so each N also runs
once on the first ``--small`` samples (default: one round of C), and the *marginal* figures, (big
run − small run) / (the requests between them), are what a request costs once the processes are up.
Also measured: the host limiter's operations alone (what the workers add to each request).

What a 2-core machine can and cannot show: the client's processes and the fake server share the two
cores, so N = 2 gives the client at most what the server leaves of the second core; the figures show
whether the work spreads over processes (CPU per request stays flat, the parent's share is small) and
what the processes cost (start-up, the limiter), not how far throughput scales with cores. On a
machine with more cores than N + 1 (and the server elsewhere), samples/s at C = 256 is expected to
grow with N until C / L or the network is the limit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_throughput import MODEL, Server, write_dataset  # noqa: E402


def child_run(args: dict) -> dict:
    """``run_experiment`` with ``--workers N``; CPU of this process and of its worker processes."""
    import resource

    import openai  # noqa: F401  imported before the clock starts, as bench_throughput does

    from evalledger.config import RunConfig
    from evalledger.run import run_experiment

    cfg = RunConfig(dataset=args["dataset"], model=MODEL, output_dir=Path(args["out"]), base_url=args["base_url"],
                    api_key="sk-bench", quiet=True, concurrency=args["concurrency"], workers=args["workers"],
                    rpm=args.get("rpm"), limit=args.get("limit"), min_free_mb=0, allow_endpoint_change=True,
                    cache=False)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    t, c = time.perf_counter(), time.process_time()
    s = run_experiment(cfg)
    wall, own = time.perf_counter() - t, time.process_time() - c
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers_cpu = (after.ru_utime + after.ru_stime) - (kids.ru_utime + kids.ru_stime)
    return {"seconds": wall, "parent_cpu_s": own, "workers_cpu_s": workers_cpu, "cpu_seconds": own + workers_cpu,
            "ok": s.ok, "errors": s.errors, "requests": s.requests, "exit_code": s.exit_code,
            "workers_rss_mb": after.ru_maxrss / 1024, "limits": s.limits}


def child_limiter(args: dict) -> dict:
    """The host limiter's operations alone: what the workers add to a request."""
    from evalledger.run.hostlimit import HostLimiter

    host = HostLimiter.private(args.get("rpm") or 1e9, None)
    try:
        n = args["ops"]
        out = {}
        for name, op in (("read (every request)", lambda: host.read()),
                         ("reserve (a request under --rpm)", lambda: host.reserve(0, 1.0, only_if_free=True))):
            c = time.process_time()
            for _ in range(n):
                op()
            out[name] = 1e6 * (time.process_time() - c) / n
        return out
    finally:
        host.close()


CHILDREN = {"run": child_run, "limiter": child_limiter}


def in_child(kind: str, **args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_child", kind, json.dumps(args)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=256)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--rpm", type=float, default=None, help="also pass --rpm (the shared bucket on every request)")
    ap.add_argument("--repeat", type=int, default=1, help="alternate the cases this many times")
    ap.add_argument("--small", type=int, default=None, help="samples of the start-up case (default: C)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        kind, raw = args._child
        print(json.dumps(CHILDREN[kind](json.loads(raw))))
        return
    import openai
    print(f"machine: {os.cpu_count()} cores (client and fake server share them); python {sys.version.split()[0]}; "
          f"openai {openai.__version__}; load average {os.getloadavg()[0]:.1f}")
    root = Path(tempfile.mkdtemp(prefix="evalledger-workers-"))
    data = write_dataset(root / "data.jsonl", args.n)
    ideal = min(args.concurrency, args.n) / args.latency
    print(f"\n--workers N, C = {args.concurrency}, L = {args.latency} s, N = {args.n:,} samples (ideal {ideal:,.0f}/s)"
          + (f", --rpm {args.rpm:g}" if args.rpm else ""))
    print(f"  {'case':<12}{'wall s':>8}{'samp/s':>9}{'ratio':>7}{'cpu ms/req':>12}{'parent':>9}{'workers':>9}"
          f"{'server':>9}")
    small = args.small or args.concurrency
    rows = []
    srv = Server(args.latency)
    try:
        for rep in range(args.repeat):
            for n_workers in args.workers:
                pair = []
                for limit in (small, None):
                    before = srv.cpu_seconds()
                    r = in_child("run", dataset=str(data), out=str(root / f"out_{n_workers}_{rep}_{limit}"),
                                 base_url=srv.openai_base_url, concurrency=args.concurrency, workers=n_workers,
                                 rpm=args.rpm, limit=limit)
                    r.update(case=f"N = {n_workers}" + (f", {small}" if limit else ""), workers=n_workers,
                             server_cpu_s=srv.cpu_seconds() - before, rate=r["ok"] / r["seconds"])
                    r["ratio"] = r["rate"] / ideal
                    pair.append(r)
                    print(f"  {r['case']:<12}{r['seconds']:>8.2f}{r['rate']:>9.0f}{r['ratio']:>7.2f}"
                          f"{1000 * r['cpu_seconds'] / max(r['requests'], 1):>12.2f}{r['parent_cpu_s']:>8.1f}s"
                          f"{r['workers_cpu_s']:>8.1f}s{r['server_cpu_s']:>8.1f}s   ok {r['ok']}, exit {r['exit_code']}",
                          flush=True)
                first, whole = pair
                extra = whole["requests"] - first["requests"]
                whole["marginal_rate"] = (whole["ok"] - first["ok"]) / max(whole["seconds"] - first["seconds"], 1e-9)
                whole["marginal_cpu_ms"] = 1000 * (whole["cpu_seconds"] - first["cpu_seconds"]) / max(extra, 1)
                whole["startup_s"] = first["seconds"]
                print(f"  {'':<12}marginal: {whole['marginal_rate']:,.0f} samples/s, "
                      f"{whole['marginal_cpu_ms']:.2f} ms CPU a request", flush=True)
                rows += pair
    finally:
        srv.stop()
    lim = in_child("limiter", ops=200_000, rpm=args.rpm)
    print("\nthe host limiter, per operation (CPU, one process):")
    for name, us in lim.items():
        print(f"  {name:<34}{us:>7.1f} µs")
    if args.json:
        args.json.write_text(json.dumps({"runs": rows, "limiter_us": lim}, indent=2))


if __name__ == "__main__":
    main()
