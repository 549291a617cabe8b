"""Benchmark: throughput, ledger overhead and resume cost of ``run_experiment``.

    python benchmarks/bench_throughput.py                 # N = 4,000 samples, 1,000,000-record resume
    python benchmarks/bench_throughput.py --n 1000 --resume-records 100000   # a quick run
    python benchmarks/bench_throughput.py --skip-resume   # only the request benchmarks

Everything is measured side by side in one invocation, against ``tests/fakeserver.py`` started as a
SEPARATE process (one per latency), so the server's CPU is not counted against evalledger. Each
case runs in a fresh child interpreter, so its CPU time and peak RSS are its own:

1. throughput at latency L = 0.2 s, concurrency C = 64 and C = 256: ``run_experiment`` with a fresh
   output directory, ``quiet=True``; samples/s and the ratio to the ideal C / L;
2. ledger overhead at L = 0: ``run_experiment`` (C = 64, ``--fsync batch``, ``always``, ``off``)
   against a bare asyncio loop with the same SDK (``openai.AsyncOpenAI(max_retries=0)``), the same
   concurrency and the same messages, and no persistence; once with the SDK's default transport
   and once with the aiohttp transport evalledger uses (the fair baseline for its own overhead);
3. resume cost on a run of ``--resume-records`` completed records (default 1,000,000): a real
   ``run_experiment`` over a generated dataset of as many rows that finds nothing pending (it sends
   no request), and ``CheckpointManager(run_dir).completed_ids()`` alone; time and peak RSS
   (``resource.getrusage`` in the child). ``get_stats`` and ``load_results`` on the same run are
   timed with ``bench_results.measure`` (the records come from ``bench_results.make_run``).

Targets: >= 0.95 of C / L at C = 64, >= 0.90 at C = 256; ledger overhead <= 5 % with
``--fsync batch``; resume pending set <= 3 s and <= 400 MB; ``get_stats`` <= 5 s.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

MODEL = "openai/bench-model"


# ------------------------------------------------------------------------------- the fake server
class Server:
    """``tests/fakeserver.py`` in its own process (its CPU is its own, not the client's)."""

    def __init__(self, latency: float, extra: list[str] | None = None) -> None:
        self.latency = latency
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fakeserver.py"), "--port", "0",
                                      "--latency", str(latency), *(extra or [])], stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline().strip()  # type: ignore[union-attr]
        if not line.startswith("READY "):
            self.proc.kill()
            raise RuntimeError(f"fake server did not start: {line!r}")
        self.base_url = line.split(" ", 1)[1]
        self.openai_base_url = self.base_url + "/v1"

    def stats(self) -> dict:
        with urllib.request.urlopen(self.base_url + "/_fake/stats", timeout=10) as r:
            return json.loads(r.read())

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# ------------------------------------------------------------------------------- datasets
def write_dataset(path: Path, n: int) -> Path:
    """A GSM8K-shaped jsonl; ids ``q0000000``… match ``bench_results.make_run``'s sample ids.

    Each question carries the fake server's ``[[ANSWER:k]]`` marker, so every answer scores correct.
    """
    with open(path, "w", encoding="utf-8") as f:
        buf = []
        for i in range(n):
            buf.append(json.dumps({"id": f"q{i:07d}", "question": f"Question {i}: what is {i} + 0? [[ANSWER:{i}]]",
                                   "answer": f"{i} + 0 = {i}\n#### {i}"}))
            if len(buf) >= 10000:
                f.write("\n".join(buf) + "\n")
                buf = []
        if buf:
            f.write("\n".join(buf) + "\n")
    return path


# ------------------------------------------------------------------------------- child cases
def child_run(args: dict) -> dict:
    """``run_experiment`` once; wall and CPU seconds exclude interpreter start-up and imports."""
    import openai  # noqa: F401  imported before the clock starts, as in the bare loop (~1-3 s here)

    from evalledger.config import RunConfig
    from evalledger.run import run_experiment

    cfg = RunConfig(dataset=args["dataset"], model=MODEL, output_dir=Path(args["out"]), base_url=args["base_url"],
                    api_key="sk-bench", quiet=True, concurrency=args["concurrency"], fsync=args.get("fsync", "batch"),
                    min_free_mb=0, limit=args.get("limit"),
                    retry_errors=args.get("retry_errors", True),
                    # the fake server listens on a new port each time: the same model, another address
                    allow_endpoint_change=True,
                    # every request must go on the wire (and the user's response cache stay untouched)
                    cache=False,
                    max_attempts=args.get("max_attempts", 6), max_retry_wait=args.get("max_retry_wait", 120.0))
    t, c = time.perf_counter(), time.process_time()
    s = run_experiment(cfg)
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "ok": s.ok,
            "errors": s.errors, "requests": s.requests, "skipped": s.skipped_completed, "exit_code": s.exit_code,
            "run_dir": str(s.run_dir), "limits": s.limits}


def child_bare(args: dict) -> dict:
    """The same requests through the same SDK with no evalledger and no persistence."""
    import asyncio

    import httpx2
    import openai
    import orjson

    from evalledger.samples import Sample  # noqa: F401  (import cost kept comparable)
    from evalledger.tasks import load_task

    task = load_task("qa")
    rows = [json.loads(line) for line in open(args["dataset"], encoding="utf-8")]
    messages = [[{"role": "system", "content": task.build_messages({"question": ""})[0]["content"]},
                 {"role": "user", "content": r["question"]}] for r in rows]

    async def main() -> int:
        extra = {}
        if args.get("aiohttp"):  # the transport evalledger uses: this isolates evalledger's own cost
            size = args["concurrency"] + 8
            extra["http_client"] = openai.DefaultAioHttpClient(
                limits=httpx2.Limits(max_connections=size, max_keepalive_connections=size))
        client = openai.AsyncOpenAI(api_key="sk-bench", base_url=args["base_url"], max_retries=0, timeout=600,
                                    **extra)
        queue: asyncio.Queue = asyncio.Queue()
        for m in messages:
            queue.put_nowait(m)
        ok = 0

        async def worker() -> None:
            nonlocal ok
            while not queue.empty():
                m = queue.get_nowait()
                body = {"model": "bench-model", "messages": m, "temperature": 0.0, "max_tokens": 512}
                if args.get("lean"):  # evalledger's request path (providers.base.post_json), nothing else
                    raw = await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
                    text = orjson.loads(await raw.aread())["choices"][0]["message"]["content"]
                else:  # what a hand-rolled script does
                    resp = await client.chat.completions.create(**body)
                    text = resp.choices[0].message.content
                if text:
                    ok += 1

        await asyncio.gather(*(worker() for _ in range(min(args["concurrency"], len(messages)))))
        await client.close()
        return ok

    t, c = time.perf_counter(), time.process_time()
    ok = asyncio.run(main())
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "ok": ok, "requests": ok}


def child_completed_ids(args: dict) -> dict:
    from evalledger.readers import CheckpointManager

    t, c = time.perf_counter(), time.process_time()
    n = len(CheckpointManager(args["run_dir"]).completed_ids())
    return {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, "ok": n}


CHILDREN = {"run": child_run, "bare": child_bare, "completed_ids": child_completed_ids}


def in_child(kind: str, **args) -> dict:
    """Run one case in a fresh interpreter; adds its peak RSS (MB)."""
    out = subprocess.run([sys.executable, __file__, "--_child", kind, json.dumps(args)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(kind: str, raw: str) -> None:
    import resource

    r = CHILDREN[kind](json.loads(raw))
    r["max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(r))


# ------------------------------------------------------------------------------- the benchmarks
def line(name: str, r: dict, n: int, extra: str = "") -> None:
    rate = f"{r['ok'] / r['seconds']:.0f}" if r.get("requests") else "-"
    cpu = f"{1000 * r['cpu_seconds'] / r['requests']:.2f}" if r.get("requests") else f"{r['cpu_seconds']:.2f}s"
    print(f"  {name:<34}{r['seconds']:>8.2f}{rate:>10}{cpu:>12}{r['max_rss_mb']:>9.0f}  {extra}", flush=True)


def header() -> None:
    print(f"  {'case':<34}{'wall s':>8}{'samp/s':>10}{'cpu ms/req':>12}{'RSS MB':>9}", flush=True)


def bench_throughput(root: Path, n: int, latency: float, concs: list[int]) -> list[dict]:
    data = write_dataset(root / f"data_{n}.jsonl", n)
    srv = Server(latency)
    rows = []
    try:
        print(f"\n1. throughput, L = {latency} s, N = {n:,} (run_experiment, fsync batch, quiet)")
        header()
        for c in concs:
            before = srv.cpu_seconds()
            r = in_child("run", dataset=str(data), out=str(root / f"out_tp_{c}"), base_url=srv.openai_base_url,
                         concurrency=c)
            r["server_cpu_s"] = srv.cpu_seconds() - before
            ideal = min(c, n) / latency
            r.update(case=f"C={c}", ideal=ideal, ratio=r["ok"] / r["seconds"] / ideal)
            line(f"C = {c} (ideal {ideal:,.0f}/s)", r, n,
                 f"ratio {r['ratio']:.2f}; server CPU {r['server_cpu_s']:.1f}s; ok {r['ok']}, errors {r['errors']}")
            rows.append(r)
        print(f"  server stats: {srv.stats()}")
    finally:
        srv.stop()
    return rows


def bench_overhead(root: Path, n: int, conc: int) -> list[dict]:
    data = root / f"data_{n}.jsonl"
    if not data.exists():
        write_dataset(data, n)
    srv = Server(0.0)
    rows = []
    try:
        print(f"\n2. ledger overhead, L = 0, C = {conc}, N = {n:,}")
        header()
        # a warm-up so the first measured case doesn't pay for cold caches
        in_child("bare", dataset=str(data), base_url=srv.openai_base_url, concurrency=conc)
        cases = [("bare asyncio + AsyncOpenAI", "bare", {}),
                 ("bare, aiohttp transport", "bare", {"aiohttp": True}),
                 ("bare, aiohttp, client.post", "bare", {"aiohttp": True, "lean": True}),
                 ("evalledger --fsync batch", "run", {"fsync": "batch"}),
                 ("evalledger --fsync always", "run", {"fsync": "always"}),
                 ("evalledger --fsync off", "run", {"fsync": "off"})]
        for name, kind, extra in cases:
            before = srv.cpu_seconds()
            kw = dict(dataset=str(data), base_url=srv.openai_base_url, concurrency=conc, **extra)
            if kind == "run":
                kw["out"] = str(root / f"out_ovh_{extra['fsync']}")
            r = in_child(kind, **kw)
            r.update(case=name, server_cpu_s=srv.cpu_seconds() - before, rate=r["ok"] / r["seconds"])
            rows.append(r)
        bare, bare_aio, bare_lean = rows[0]["rate"], rows[1]["rate"], rows[2]["rate"]
        for r in rows:
            r["ratio"] = r["rate"] / bare
            r["ratio_aiohttp"] = r["rate"] / bare_aio
            r["ratio_lean"] = r["rate"] / bare_lean
            line(r["case"], r, n, f"x{r['ratio']:.2f} of bare, x{r['ratio_aiohttp']:.2f} on aiohttp, "
                                  f"x{r['ratio_lean']:.2f} of bare post; server CPU {r['server_cpu_s']:.1f}s")
    finally:
        srv.stop()
    return rows


def bench_429(root: Path, n: int, latency: float, conc: int, rate: float = 0.3) -> list[dict]:
    """A server answering 429 with ``Retry-After: 1`` to ``rate`` of the requests, at random,
    against the same server without faults: every sample must end ok, wall time <= 1.5x. The 429s
    are answered after 20 ms (as real rate limiters do, without generating) and, for comparison,
    after the full latency L (then even a perfect client needs ~1/(1 - rate) = 1.43x the
    request-time, plus the last retries' Retry-After)."""
    data = root / f"data_{n}.jsonl"
    if not data.exists():
        write_dataset(data, n)
    rows = []
    print(f"\n4. 429 storm: {rate:.0%} of requests answered 429 with Retry-After: 1, L = {latency} s, C = {conc}, "
          f"N = {n:,} (run_experiment, defaults)")
    header()
    storm = ["--fail-rate", str(rate), "--fail-status", "429", "--fail-retry-after", "1"]
    for name, extra in (("no faults", []),
                        (f"{rate:.0%} 429 after 20 ms, Retry-After 1", storm + ["--fault-latency", "0.02"]),
                        (f"{rate:.0%} 429 after L, Retry-After 1", storm)):
        srv = Server(latency, extra)
        try:
            r = in_child("run", dataset=str(data), out=str(root / f"out_429_{len(rows)}"),
                         base_url=srv.openai_base_url, concurrency=conc)
            stats = srv.stats()
        finally:
            srv.stop()
        r.update(case=name, status_counts=stats.get("status_counts"))
        rows.append(r)
        line(name, r, n, f"ok {r['ok']}, errors {r['errors']}, server replies {r['status_counts']}")
    for r in rows[1:]:
        r["wall_ratio"] = r["seconds"] / rows[0]["seconds"]
        print(f"  {r['case']}: wall time x{r['wall_ratio']:.2f} of no faults (target <= 1.5); limits {r.get('limits')}")
    return rows


def bench_resume(root: Path, records: int, *, reuse: bool = False, readers: bool = True) -> list[dict]:
    """Section 3. ``reuse``: keep a run already built in ``root`` for this many records (``--dir``);
    ``readers``: also time ``get_stats`` and ``load_results`` on it."""
    from bench_results import measure

    print(f"\n3. resume cost, {records:,} completed records")
    data = root / f"data_{records}.jsonl"
    out = root / "out_resume"
    built = sorted(p for p in out.glob("*") if p.is_dir()) if reuse and data.exists() else []
    if len(built) == 1 and any(built[0].glob("results*.jsonl")):
        run_dir = built[0]
        print(f"  reusing {run_dir}")
    else:
        run_dir = _build_resume_run(root, data, out, records)
    rows = _time_resume(data, out, run_dir, records)
    if readers:
        for what in ("get_stats", "load_results"):
            m = measure(what, run_dir)
            m.update(case=what, ok=m["rows"], requests=0)
            line(what, m, records, f"cpu {m['cpu_seconds']:.1f}s, rows {m['rows']:,}")
            rows.append(m)
    return rows


def _build_resume_run(root: Path, data: Path, out: Path, records: int) -> Path:
    """The dataset and the run directory with ``records`` completed records (see the module docstring)."""
    from bench_results import make_run

    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    write_dataset(data, records)
    # A real run creates the manifest (dataset sha256, identity) for this dataset: one sample, one request.
    srv = Server(0.0)
    try:
        first = in_child("run", dataset=str(data), out=str(out), base_url=srv.openai_base_url, concurrency=1, limit=1)
    finally:
        srv.stop()
    run_dir = Path(first["run_dir"])
    # Then the ledger: bench_results' generator (4 shards, ~0.9 kB a record, 1 % errors, 0.5 % retried),
    # written with the real CheckpointManager into a scratch run whose shard files are moved in.
    scratch = root / "scratch_run"
    make_run(scratch, records)
    for p in scratch.glob("results*.jsonl"):
        shutil.move(str(p), run_dir / p.name)
    shutil.rmtree(scratch)
    size = sum(p.stat().st_size for p in run_dir.glob("results*.jsonl"))
    print(f"  built in {time.perf_counter() - t:.0f}s: {size / 1e6:.0f} MB of results, dataset {data.stat().st_size / 1e6:.0f} MB")
    return run_dir


def _time_resume(data: Path, out: Path, run_dir: Path, records: int) -> list[dict]:
    """``run_experiment`` finding nothing pending, then ``completed_ids()``, each in a fresh process."""
    # bench_results' records leave ~1 % of samples with only an error record, which a default resume would
    # send again; retry_errors=False (--no-retry-errors) leaves them alone, so this resume finds nothing
    # pending and sends no request: it times opening the run and computing the pending set.
    # The first resume starts without <run_dir>/.cache (as after a crash mid-run, or a deleted cache) and
    # writes it; the second is the usual resume, which finds it.
    shutil.rmtree(run_dir / ".cache", ignore_errors=True)
    rows = []
    srv = Server(0.0)
    try:
        header()
        for when in ("no .cache", "with .cache"):
            r = in_child("run", dataset=str(data), out=str(out), base_url=srv.openai_base_url, concurrency=64,
                         retry_errors=False)
            r.update(case=f"run_experiment (nothing pending, {when})")
            line(f"run_experiment, nothing pending, {when}", r, records,
                 f"skipped {r['skipped']:,}, sent {r['requests']} requests, exit {r['exit_code']}")
            rows.append(r)
    finally:
        srv.stop()
    r = in_child("completed_ids", run_dir=str(run_dir))
    r.update(case="completed_ids()", requests=0)
    line("CheckpointManager.completed_ids()", r, records, f"{r['ok']:,} ids")
    rows.append(r)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4000, help="samples per throughput/overhead case (default 4,000)")
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--resume-records", type=int, default=1_000_000)
    ap.add_argument("--skip-resume", action="store_true")
    ap.add_argument("--only-resume", action="store_true")
    ap.add_argument("--only-429", action="store_true", help="only section 4 (the 429 storm)")
    ap.add_argument("--dir", type=Path, default=None, help="scratch directory (default: a temp dir, removed after)")
    ap.add_argument("--reuse", action="store_true",
                    help="with --dir: reuse the resume run built there by an earlier invocation")
    ap.add_argument("--skip-readers", action="store_true", help="section 3 without get_stats / load_results")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    ap.add_argument("--_child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._child:
        _child_main(*args._child)
        return
    root = args.dir or Path(tempfile.mkdtemp(prefix="evalledger-tp-"))
    root.mkdir(parents=True, exist_ok=True)
    import openai
    print(f"machine: {os.cpu_count()} cores (client and fake server share them); python {sys.version.split()[0]}; "
          f"openai {openai.__version__}; load average {os.getloadavg()[0]:.1f}")
    results: dict = {}
    try:
        if not args.only_resume and not args.only_429:
            results["throughput"] = bench_throughput(root, args.n, args.latency, args.concurrency)
            results["overhead"] = bench_overhead(root, args.n, 64)
        if not args.only_resume:
            results["storm"] = bench_429(root, args.n, args.latency, 64)
        if not args.skip_resume and not args.only_429:
            results["resume"] = bench_resume(root, args.resume_records, reuse=args.reuse,
                                             readers=not args.skip_readers)
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
