"""Two writers: shards of one run written at the same time by separate processes do not interfere."""

from __future__ import annotations

from collections import Counter

from helpers import all_records, cli_env, marker, popen_cli, read_lines, write_qa_dataset

from evalledger.datasets import shard_of


def test_two_shards_write_concurrently_without_interference(fake_server, tmp_path):
    n = 80
    # Each shard needs >= 10 rounds of 0.25 s, so the two overlap even if one process starts a
    # second late on a loaded machine (with 0.02 s a whole shard could finish before the other began).
    fake_server.latency = 0.25
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    base = ["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(out), "--run-id", "pair",
            "--concurrency", "4", "--quiet"]
    procs = {k: popen_cli([*base, "--shard", f"{k}/2"], env, cwd=tmp_path) for k in (1, 2)}
    # both really overlap in time: each is still running when the other has written records
    results = {k: out / "pair" / f"results.shard-{k}-of-2.jsonl" for k in (1, 2)}
    outs = {k: p.communicate(timeout=120) for k, p in procs.items()}
    for k, p in procs.items():
        assert p.returncode == 0, outs[k][1]
    for k, path in results.items():
        recs, tail = read_lines(path)
        assert tail == b""
        assert all(shard_of(r["sample_id"], 2) == k and r["shard"] == f"{k}/2" for r in recs)
    counts = Counter(r["sample_id"] for r in all_records(out / "pair") if r["status"] == "ok")
    assert set(counts) == {f"s{i:05d}" for i in range(n)} and set(counts.values()) == {1}
    assert all(fake_server.count_for(marker(i)) == 1 for i in range(n))
    # their start times overlapped (neither waited for the other's lock)
    first_recs = {k: read_lines(results[k])[0] for k in (1, 2)}
    start = {k: min(r["started_at"] for r in first_recs[k]) for k in (1, 2)}
    end = {k: max(r["finished_at"] for r in first_recs[k]) for k in (1, 2)}
    assert start[1] < end[2] and start[2] < end[1]
