"""The response cache shared across runs: identical requests are never paid for twice (after
--overwrite, under another --run-id, in a self-correction run), anything that changes the request
misses, damaged entries are never trusted, racing writers leave a valid entry, a cache that cannot
be written never fails a run, and `cache stats` / `cache prune` / `stats` / the report show it.
Through the real SDKs against the loopback fake server (each test has its own cache directory:
tests/conftest.py sets EVALLEDGER_CACHE_DIR)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import signal
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    all_records,
    cli_env,
    marker,
    popen_cli,
    run_cli,
    run_config,
    run_many,
    tiny_fs,
    wait_for,
    write_qa_dataset,
)
from test_run_numbers import SLOW_SCORING_TASK
from test_self_correct import cfg as sc_cfg
from test_self_correct import planned_reply

from evalledger import cache_stats, get_stats, prune_cache
from evalledger.config import RunConfig
from evalledger.configfile import load_run_config
from evalledger.errors import UsageError
from evalledger.readers import load_results, write_report
from evalledger.readers.scan_arrow import parse_block
from evalledger.response_cache import CachedAnswer, ResponseCache, default_cache_dir, entry_path, request_key
from evalledger.response_cache import store as cache_store
from evalledger.response_cache.entries import decode_entry, encode_entry
from evalledger.run import prepare_run, run_experiment

PRICE = {"price_input": 1.0, "price_output": 2.0}
N = 5


@pytest.fixture
def cache_dir() -> Path:
    """This test's cache directory (set by tests/conftest.py for every test)."""
    return Path(os.environ["EVALLEDGER_CACHE_DIR"])


def entry_files(root: Path) -> list[Path]:
    return sorted(p for p in (root / "v1").rglob("*.json"))


def entry_of_sample(root: Path, i: int) -> Path:
    """The entry file whose answer is sample i's (the fake server answers "#### i")."""
    (found,) = [p for p in entry_files(root) if json.loads(p.read_bytes())["answer"]["text"].endswith(f"#### {i}")]
    return found


def first_run(server: Any, tmp_path: Path, n: int = N, **kw: Any) -> tuple[Path, Any]:
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    s = run_experiment(run_config(server, data, tmp_path / "out", **PRICE, **kw))
    assert s.exit_code == 0 and s.requests == n and server.request_count == n
    return data, s


# ------------------------------------------------------------------------------ paying nothing twice


def test_overwrite_and_another_run_id_pay_nothing_and_records_say_cached(fake_server, tmp_path, cache_dir):
    data, s1 = first_run(fake_server, tmp_path)
    originals = {r["sample_id"]: r for r in all_records(s1.run_dir)}
    assert all("cached" not in r and "saved" not in r for r in originals.values())
    assert get_stats(s1.run_dir)["cache_hits"] == 0 and len(entry_files(cache_dir)) == N

    again = run_experiment(run_config(fake_server, data, tmp_path / "out", overwrite=True, **PRICE))
    other = run_experiment(run_config(fake_server, data, tmp_path / "out", run_id="another", **PRICE))
    assert fake_server.request_count == N  # not one request more
    for s in (again, other):
        assert s.exit_code == 0 and s.ok == N and s.requests == 0
        for r in all_records(s.run_dir):
            first = originals[r["sample_id"]]
            assert r["cached"] is True and r["attempts"] == 0
            assert r["paid"] == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}
            # usage and cost still describe the answer; saved is what it would have cost
            assert r["response"] == first["response"] and r["usage"] == first["usage"]
            assert r["cost_usd"] == first["cost_usd"] > 0 and r["request_ids"] == first["request_ids"]
            assert r["saved"] == {**first["usage"], "cost_usd": first["cost_usd"]}
        st = get_stats(s.run_dir)
        assert st["cost_usd"] == 0.0 and st["input_tokens"] == 0 and st["cache_hits"] == N
        assert st["cache_saved_usd"] == pytest.approx(sum(r["cost_usd"] for r in originals.values()))
    # the first run, moved aside, paid for them
    assert get_stats(again.moved_aside)["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in originals.values()))


def test_no_cache_neither_reads_nor_writes(fake_server, tmp_path, cache_dir):
    data = write_qa_dataset(tmp_path / "qa.jsonl", N)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", cache=False))
    assert s.requests == N and entry_files(cache_dir) == []
    env = cli_env(fake_server)
    args = ["run", "--dataset", str(data), "--model", "openai/test-model", "--output-dir", str(tmp_path / "out"),
            "--quiet", "--overwrite"]
    assert run_cli(args, env).returncode == 0  # the cache on (the default): pays, and stores
    assert fake_server.request_count == 2 * N and len(entry_files(cache_dir)) == N
    r = run_cli([*args, "--no-cache"], env)
    assert r.returncode == 0, r.stderr
    assert fake_server.request_count == 3 * N  # paid again: the entries were not read
    assert all("cached" not in rec for rec in all_records(s.run_dir))


def test_cache_dir_flag_and_variable_choose_the_directory(fake_server, tmp_path, cache_dir):
    data = write_qa_dataset(tmp_path / "qa.jsonl", N)
    mine = tmp_path / "my cache"
    r = run_cli(["run", "--dataset", str(data), "--model", "openai/test-model", "--output-dir", str(tmp_path / "o"),
                 "--quiet", "--cache-dir", str(mine)], cli_env(fake_server))
    assert r.returncode == 0, r.stderr
    assert len(entry_files(mine)) == N and entry_files(cache_dir) == []
    assert cache_stats(mine).entries == N and cache_stats().entries == 0  # the default: EVALLEDGER_CACHE_DIR


def test_a_hit_takes_no_request_slot_and_no_rate_limit(fake_server, tmp_path):
    data, _ = first_run(fake_server, tmp_path)
    t0 = time.monotonic()
    # One request every two minutes: any request would make this run wait for minutes.
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", overwrite=True, rpm=0.5, concurrency=1,
                                  **PRICE))
    assert s.exit_code == 0 and s.ok == N and s.requests == 0 and time.monotonic() - t0 < 30
    assert s.limits["throttled_s"] == 0.0  # no request waited on --rpm
    assert fake_server.request_count == N


# ------------------------------------------------------------------------------ what a key holds


def test_the_key_changes_with_everything_that_determines_the_answer():
    request = {"messages": [{"role": "user", "content": "2+2?"}], "model": "openai/m", "temperature": 0.0,
               "max_tokens": 16, "seed": 0, "top_p": None}
    base = request_key(endpoint="http://a/v1", epoch=1, request=request)
    assert base == request_key(endpoint="http://a/v1", epoch=1, request=dict(reversed(list(request.items()))))
    variants = [request_key(endpoint="http://b/v1", epoch=1, request=request),
                request_key(endpoint="http://a/v1", epoch=2, request=request)]
    for field, value in [("messages", [{"role": "user", "content": "2+3?"}]), ("model", "anthropic/m"),
                         ("temperature", 0.5), ("max_tokens", 17), ("seed", 1), ("top_p", 0.9)]:
        variants.append(request_key(endpoint="http://a/v1", epoch=1, request={**request, field: value}))
    assert len({base, *variants}) == len(variants) + 1
    assert re.fullmatch(r"[0-9a-f]{64}", base)
    lone = {**request, "messages": [{"role": "user", "content": "\ud800"}]}  # a lone surrogate still has a key
    assert request_key(endpoint="x", epoch=1, request=lone) != base


@pytest.mark.parametrize("change", [{"seed": 1}, {"temperature": 0.5}, {"max_tokens": 100}])
def test_another_seed_temperature_or_max_tokens_misses(fake_server, tmp_path, change):
    data, _ = first_run(fake_server, tmp_path)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", **change, **PRICE))
    assert s.exit_code == 0 and s.requests == N and fake_server.request_count == 2 * N
    assert all("cached" not in r for r in all_records(s.run_dir))


def test_another_endpoint_misses(fake_server, second_server, tmp_path):
    data, _ = first_run(fake_server, tmp_path)
    s = run_experiment(run_config(second_server, data, tmp_path / "out2", **PRICE))
    assert s.requests == N and second_server.request_count == N


def test_each_epoch_is_its_own_entry_even_where_the_provider_takes_no_seed(fake_server, tmp_path, cache_dir):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    anthropic = dict(model="anthropic/claude-test", base_url=fake_server.anthropic_base_url, api_key="sk-ant")
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", epochs=2, **anthropic))
    assert s.exit_code == 0 and s.ok == 6 and fake_server.request_count == 6  # epoch 2 was not epoch 1's answer
    assert all("seed" not in r.body for r in fake_server.requests)  # Anthropic takes no seed
    assert len(entry_files(cache_dir)) == 6
    again = run_experiment(run_config(fake_server, data, tmp_path / "out", epochs=3, run_id="more", **anthropic))
    assert again.ok == 9 and fake_server.request_count == 9  # epochs 1 and 2 from the cache, epoch 3 sent
    cached = {(r["sample_id"], r["epoch"]) for r in all_records(again.run_dir) if r.get("cached")}
    assert cached == {(f"s{i:05d}", e) for i in range(3) for e in (1, 2)}


# ------------------------------------------------------------------------------ multi-turn tasks


def test_self_correct_is_replayed_from_the_cache_after_overwrite(fake_server, tmp_path, cache_dir):
    fake_server.responder = planned_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    first = run_experiment(sc_cfg(fake_server, data, tmp_path / "out", **PRICE))
    assert first.exit_code == 0 and fake_server.request_count == 8 and len(entry_files(cache_dir)) == 8
    paid = get_stats(first.run_dir)["cost_usd"]
    before = {r["sample_id"]: r for r in all_records(first.run_dir)}

    again = run_experiment(sc_cfg(fake_server, data, tmp_path / "out", overwrite=True, **PRICE))
    assert again.exit_code == 0 and again.ok == 4 and again.requests == 0 and fake_server.request_count == 8
    calls = again.run_dir / "calls.jsonl"
    assert not calls.exists() or calls.read_bytes() == b""  # only paid calls go to the turn cache
    for r in all_records(again.run_dir):
        assert r["cached"] is True and [t.get("cached") for t in r["turn_usage"]] == [True, True]
        assert r["extra"]["transition"] == before[r["sample_id"]]["extra"]["transition"]
        assert r["saved"]["cost_usd"] == pytest.approx(r["cost_usd"])
    st = get_stats(again.run_dir)
    assert st["cost_usd"] == 0.0 and st["cache_hits"] == 4 and st["cache_saved_usd"] == pytest.approx(paid)


def test_self_correct_with_another_review_pays_only_the_second_turn(fake_server, tmp_path):
    fake_server.responder = planned_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    assert run_experiment(sc_cfg(fake_server, data, tmp_path / "out", **PRICE)).exit_code == 0
    review = tmp_path / "review.txt"
    review.write_text("Check it once more, then answer in the same format.\n")
    s = run_experiment(sc_cfg(fake_server, data, tmp_path / "out", review_prompt=str(review), **PRICE))
    assert s.exit_code == 0 and s.requests == 4 and fake_server.request_count == 12  # turn 2 only
    recs = all_records(s.run_dir)
    calls = [json.loads(line) for line in (s.run_dir / "calls.jsonl").read_text().splitlines()]
    assert sorted(c["turn"] for c in calls) == [1] * 4  # the paid calls, billed once
    for r in recs:
        assert r["cached"] is True and [t.get("cached", False) for t in r["turn_usage"]] == [True, False]
        assert r["saved"]["input_tokens"] == r["turn_usage"][0]["input_tokens"]
    st = get_stats(s.run_dir)
    assert st["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))
    assert st["cache_saved_usd"] == pytest.approx(sum(r["saved"]["cost_usd"] for r in recs))
    assert st["cost_usd"] + st["cache_saved_usd"] == pytest.approx(sum(r["cost_usd"] for r in recs))


# ------------------------------------------------------------------------------ damaged entries


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "checksum":  # still valid JSON with a valid shape: only the checksum tells
        body = json.loads(data)
        body["answer"]["text"] = body["answer"]["text"].replace("####", "#### 9")
        path.write_text(json.dumps(body))
    elif how == "another key":  # a whole, valid entry, but for another request
        path.write_bytes(other.read_bytes())


def test_damaged_entries_are_ignored_the_request_sent_and_the_entry_replaced(fake_server, tmp_path, cache_dir,
                                                                             capsys):
    data, _ = first_run(fake_server, tmp_path)
    hows = ["garbage", "truncated", "checksum", "another key"]
    paths = [entry_of_sample(cache_dir, i) for i in range(N)]
    for i, how in enumerate(hows):
        _damage(paths[i], how, paths[-1])
    assert cache_stats().corrupt == len(hows) and cache_stats().entries == N - len(hows)
    capsys.readouterr()
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", overwrite=True, **PRICE))
    assert s.exit_code == 0 and s.ok == N and s.requests == len(hows)
    for i in range(N):
        assert fake_server.count_for(marker(i)) == (2 if i < len(hows) else 1)
    recs = {r["sample_id"]: r for r in all_records(s.run_dir)}
    assert [recs[f"s{i:05d}"].get("cached", False) for i in range(N)] == [False] * len(hows) + [True]
    assert all(r["correct"] for r in recs.values())  # no damaged answer was used
    err = capsys.readouterr().err
    assert err.count("cannot be trusted") == 1, err  # said once
    st = cache_stats()
    assert st.corrupt == 0 and st.entries == N  # replaced by the fresh answers


def test_an_entry_that_cannot_be_decoded_says_why():
    answer = CachedAnswer("#### 4", 3, 2, "req-1", "stop", "m")
    key = "a" * 64
    data = encode_entry(key, created_ms=1, model="openai/m", endpoint="e", epoch=1, answer=answer)
    assert decode_entry(data, key).answer == answer
    assert decode_entry(data, "b" * 64) == "holds another key"
    assert decode_entry(data[:-10], key).startswith("not JSON")
    assert decode_entry(data.replace(b'"stop"', b'"long"'), key) == "wrong checksum"
    assert decode_entry(b"[1, 2]", key) == "not an entry of this format"


# ------------------------------------------------------------------------------ several writers


def _hammer(root: str, key: str, worker: int, rounds: int, seen: Any) -> None:
    """Write the same entry ``rounds`` times (each worker its own answer) and read it back each time."""
    cache = ResponseCache(Path(root))
    for n in range(rounds):
        assert cache.put(key, CachedAnswer(f"answer from {worker}", worker, n), model="m", endpoint="e", epoch=1)
        got = cache.get(key)
        assert got is not None and got.text.startswith("answer from ")
    seen.put((cache.counters.corrupt, cache.counters.hits))


def test_processes_racing_on_one_entry_leave_a_valid_one(tmp_path):
    root, key, workers, rounds = tmp_path / "c", "f" * 64, 4, 150
    ctx = multiprocessing.get_context("fork")
    seen = ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(root), key, w, rounds, seen)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    results = [seen.get(timeout=5) for _ in procs]
    assert results == [(0, rounds)] * workers  # every read found a whole, trusted entry
    st = cache_stats(root)
    assert (st.entries, st.corrupt, st.temp_files) == (1, 0, 0)
    entry = decode_entry(entry_path(root, key).read_bytes(), key)
    assert entry.answer.text in {f"answer from {w}" for w in range(workers)}


def test_two_cli_runs_at_once_share_the_cache(fake_server, tmp_path, cache_dir):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 20)
    base = ["run", "--dataset", str(data), "--model", "openai/test-model", "--output-dir", str(tmp_path / "o"),
            "--quiet", "--concurrency", "4"]
    done = run_many([[*base, "--run-id", "one"], [*base, "--run-id", "two"]], cli_env(fake_server), cwd=tmp_path)
    assert [d.returncode for d in done] == [0, 0], [d.stderr for d in done]
    assert 20 <= fake_server.request_count <= 40
    st = cache_stats()
    assert (st.entries, st.corrupt, st.temp_files) == (20, 0, 0)
    sent = fake_server.request_count
    third = run_cli([*base, "--run-id", "three"], cli_env(fake_server), cwd=tmp_path)
    assert third.returncode == 0 and fake_server.request_count == sent  # every answer from the cache
    assert all(r["cached"] for r in all_records(tmp_path / "o" / "three"))


# ------------------------------------------------------------------------------ a cache that cannot be written


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES])
def test_a_failing_cache_write_never_fails_the_run(fake_server, tmp_path, cache_dir, capsys, monkeypatch, code):
    def refuse(tmp: Path, data: bytes) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(cache_store, "_write_new", refuse)
    data = write_qa_dataset(tmp_path / "qa.jsonl", N)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", **PRICE))
    assert s.exit_code == 0 and s.ok == N and s.requests == N
    err = capsys.readouterr().err
    assert err.count("could not write to the response cache") == 1 and os.strerror(code) in err, err
    assert entry_files(cache_dir) == [] and cache_stats().temp_files == 0


def test_a_full_or_read_only_cache_filesystem_never_fails_the_run(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", N)
    with tiny_fs(tmp_path, "256k") as mnt:
        cache = mnt / "cache"
        s = run_experiment(run_config(fake_server, data, tmp_path / "out", cache_dir=str(cache), **PRICE))
        assert s.exit_code == 0 and len(entry_files(cache)) == N
        # Read-only: entries are still read (nothing sent), new answers cannot be stored (the run goes on).
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            again = run_experiment(run_config(fake_server, data, tmp_path / "out", cache_dir=str(cache), overwrite=True,
                                              **PRICE))
            assert again.exit_code == 0 and again.requests == 0
            other = run_cli(["run", "--dataset", str(data), "--model", "openai/test-model", "--seed", "3", "--quiet",
                             "--output-dir", str(tmp_path / "out"), "--cache-dir", str(cache)], cli_env(fake_server))
            assert other.returncode == 0 and other.stderr.count("could not write to the response cache") == 1, \
                other.stderr
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        # Full: fill the filesystem, then a run that must store its answers.
        with open(mnt / "filler", "wb", buffering=0) as f:
            with pytest.raises(OSError) as full_disk:
                while True:
                    f.write(b"\0" * 65536)
            assert full_disk.value.errno == errno.ENOSPC
        full = run_cli(["run", "--dataset", str(data), "--model", "openai/test-model", "--seed", "4", "--quiet",
                        "--output-dir", str(tmp_path / "out"), "--cache-dir", str(cache)], cli_env(fake_server))
        assert full.returncode == 0 and full.stderr.count("could not write to the response cache") == 1, full.stderr
        assert fake_server.request_count == 3 * N


# ------------------------------------------------------------------------------ age, stats, prune


def _age_entries(root: Path, days: float) -> None:
    """Rewrite every entry as stored ``days`` ago (its checksum made again)."""
    for p in entry_files(root):
        e = decode_entry(p.read_bytes(), p.stem)
        p.write_bytes(encode_entry(e.key, created_ms=int((time.time() - days * 86400) * 1000), model=e.model,
                                   endpoint=e.endpoint, epoch=e.epoch, answer=e.answer))


def test_entries_older_than_the_ttl_are_not_used_and_are_replaced(fake_server, tmp_path, cache_dir):
    data, _ = first_run(fake_server, tmp_path)
    _age_entries(cache_dir, 10)
    kept = run_experiment(run_config(fake_server, data, tmp_path / "out", overwrite=True, cache_ttl=30, **PRICE))
    assert kept.requests == 0
    fake_server.responder = lambda body: "fresh: #### 1"
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", overwrite=True, cache_ttl=5, **PRICE))
    assert s.requests == N and fake_server.request_count == 2 * N
    assert all("cached" not in r and r["response"] == "fresh: #### 1" for r in all_records(s.run_dir))
    assert all(json.loads(p.read_bytes())["answer"]["text"] == "fresh: #### 1" for p in entry_files(cache_dir))
    oldest = datetime.fromisoformat(cache_stats().oldest.replace("Z", "+00:00"))
    assert datetime.now(timezone.utc) - oldest < timedelta(hours=1)  # every entry was stored again


def test_cache_stats_and_prune_from_python_and_the_cli(fake_server, tmp_path, cache_dir):
    data = write_qa_dataset(tmp_path / "qa.jsonl", N)
    run_experiment(run_config(fake_server, data, tmp_path / "out", **PRICE))
    _age_entries(cache_dir, 10)
    run_experiment(run_config(fake_server, data, tmp_path / "out", model="other-model", run_id="b", **PRICE))
    (cache_dir / "v1" / "zz").mkdir()
    junk = cache_dir / "v1" / "zz" / "00"
    junk.mkdir()
    (junk / ("0" * 64 + ".json")).write_bytes(b"{not json")
    stale_temp = junk / ".x.json.123-abcd.tmp"
    stale_temp.write_bytes(b"half")
    os.utime(stale_temp, (time.time() - 7200, time.time() - 7200))
    fresh_temp = junk / ".y.json.123-abcd.tmp"
    fresh_temp.write_bytes(b"being written")

    st = cache_stats()
    sizes = sum(p.stat().st_size for p in entry_files(cache_dir)) - len(b"{not json")
    assert (st.entries, st.bytes, st.corrupt, st.temp_files) == (2 * N, sizes, 1, 2)
    assert {m: s.entries for m, s in st.by_model.items()} == {"openai/test-model": N, "other-model": N}
    assert st.oldest < st.newest
    r = run_cli(["cache", "stats", "--json"], None)
    assert r.returncode == 0 and json.loads(r.stdout) == json.loads(json.dumps(st.to_dict()))
    text = run_cli(["cache", "stats"], None).stdout
    assert f"entries  {2 * N} " in text and "other-model" in text and "1 damaged" in text

    dry = run_cli(["cache", "prune", "--older-than", "5", "--dry-run", "--json"], None)
    assert dry.returncode == 0, dry.stderr
    assert {k: json.loads(dry.stdout)[k] for k in ("entries", "corrupt", "temp_files", "kept")} == \
        {"entries": N, "corrupt": 1, "temp_files": 1, "kept": N}
    assert cache_stats().entries == 2 * N  # nothing removed
    assert prune_cache(older_than_days=None).to_dict()["entries"] == 0  # without an age: only junk goes
    assert cache_stats().corrupt == 0 and not stale_temp.exists() and fresh_temp.exists()
    r = run_cli(["cache", "prune", "--older-than", "5"], None)
    assert r.returncode == 0 and f"removed {N} entries" in r.stdout, r.stdout
    after = cache_stats()
    assert after.entries == N and set(after.by_model) == {"other-model"}
    # the pruned entries are paid for again, the others not
    before = fake_server.request_count
    run_experiment(run_config(fake_server, data, tmp_path / "out", overwrite=True, **PRICE))
    run_experiment(run_config(fake_server, data, tmp_path / "out", model="other-model", run_id="b", overwrite=True,
                              **PRICE))
    assert fake_server.request_count == before + N
    assert run_cli(["cache", "prune", "--older-than", "-1"], None).returncode == 2


def test_stats_command_and_report_show_hits_and_money_saved(fake_server, tmp_path):
    data, s1 = first_run(fake_server, tmp_path)
    s2 = run_experiment(run_config(fake_server, data, tmp_path / "out", run_id="again", **PRICE))
    saved = sum(r["cost_usd"] for r in all_records(s1.run_dir))
    text = run_cli(["stats", str(s2.run_dir)], None).stdout
    assert re.search(rf"response cache\s+{N} samples answered, saved {saved:.4f} USD", text), text
    assert re.search(r"response cache\s+no hits", run_cli(["stats", str(s1.run_dir)], None).stdout)
    out = tmp_path / "report.html"
    write_report(tmp_path / "out", out)
    cells = dict(re.findall(r'data-run="([^"]+)".*?data-key="cache" data-value="([^"]+)"', out.read_text()))
    values = {run: json.loads(v.replace("&quot;", '"')) for run, v in cells.items()}
    assert values["again"]["cache_hits"] == N and values["again"]["cache_saved_usd"] == pytest.approx(saved)
    assert values[s1.run_id] == {"cache_hits": 0, "cache_saved_usd": 0.0}


def test_cached_records_read_the_same_through_arrow_and_python(fake_server, tmp_path, monkeypatch):
    first_run(fake_server, tmp_path, n=8)
    # cached and paid records in one file: a dataset whose first 8 rows are the same, and 4 more
    more = write_qa_dataset(tmp_path / "more.jsonl", 12)
    s = run_experiment(run_config(fake_server, more, tmp_path / "out", run_id="mixed", **PRICE))
    assert s.requests == 4
    results = (s.run_dir / "results.jsonl").read_bytes()
    assert parse_block(results, 0) is not None  # the fast path takes the runner's cached records
    monkeypatch.setenv("EVALLEDGER_SCAN_CACHE", "off")

    def frame() -> list[Any]:
        df = load_results(s.run_dir)
        return [(c, str(df[c].dtype), [repr(v) for v in df[c].tolist()]) for c in df.columns]

    fast = frame()
    monkeypatch.setenv("EVALLEDGER_SCAN_ARROW", "off")
    slow = frame()
    assert fast == slow
    columns = dict((c, values) for c, _, values in fast)
    assert columns["cached"] == ["True"] * 8 + ["<NA>"] * 4
    assert columns["saved_cost_usd"][:8] == columns["cost_usd"][:8] and columns["saved_cost_usd"][8:] == ["<NA>"] * 4


def test_progress_and_the_summary_line_count_no_cost_for_hits(fake_server, tmp_path):
    data, s1 = first_run(fake_server, tmp_path)
    paid = get_stats(s1.run_dir)["cost_usd"]
    args = ["run", "--dataset", str(data), "--model", "openai/test-model", "--output-dir", str(tmp_path / "out"),
            "--price-input", "1", "--price-output", "2"]
    r = run_cli([*args, "--run-id", "again"], cli_env(fake_server))
    assert r.returncode == 0 and fake_server.request_count == N, r.stderr
    assert "cost=$0.0000" in r.stderr and "cost $0.0000; this invocation: 5 ok, 0 errors, 0 requests" in r.stderr
    r = run_cli([*args, "--run-id", "third", "--no-cache"], cli_env(fake_server))
    assert f"cost=${paid:.4f}" in r.stderr and paid > 0 and fake_server.request_count == 2 * N


def test_money_saved_is_unknown_without_a_price(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    run_experiment(run_config(fake_server, data, tmp_path / "out"))
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", run_id="again"))
    recs = all_records(s.run_dir)
    assert all(r["cached"] and r["saved"]["cost_usd"] is None and r["saved"]["input_tokens"] > 0 for r in recs)
    st = get_stats(s.run_dir)
    assert st["cache_hits"] == 3 and st["cache_saved_usd"] is None  # unknown, never 0


# ------------------------------------------------------------------------------ configuration


def test_cache_settings_are_not_part_of_the_run_id_and_reach_the_resume_command(tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    base = RunConfig(dataset=str(data), output_dir=tmp_path, model="openai/m", base_url="http://127.0.0.1:9/v1")
    other = base.replace(cache=False, cache_dir=str(tmp_path / "c"), cache_ttl=3.5)
    assert prepare_run(base).run_id == prepare_run(other).run_id
    args = other.to_cli_args()
    assert "--no-cache" in args and args[args.index("--cache-dir") + 1] == str(tmp_path / "c")
    assert args[args.index("--cache-ttl") + 1] == "3.5" and "--no-cache" not in base.to_cli_args()
    for bad in (0, -1, float("inf")):
        with pytest.raises(UsageError, match="--cache-ttl"):
            base.replace(cache_ttl=bad)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "exp.toml").write_text(f'dataset = "{data}"\ncache = false\ncache-dir = "responses"\n'
                                                "cache-ttl = 7\n")
    loaded = load_run_config(tmp_path / "conf" / "exp.toml")
    assert (loaded.cache, loaded.cache_dir, loaded.cache_ttl) == (False, str(tmp_path / "conf" / "responses"), 7.0)


def test_the_default_directory_honours_the_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("EVALLEDGER_CACHE_DIR", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("EVALLEDGER_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "evalledger" / "responses"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "evalledger" / "responses"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "evalledger" / "responses"


# ------------------------------------------------------------------------------ a hard stop loses nothing paid


def test_answers_lost_by_a_hard_stop_are_not_paid_again(fake_server, tmp_path):
    """14 answered samples still being scored and 2 requests hanging when a second Ctrl-C stops the
    run: the answers are in the response cache, so the stop says none was lost, and the resume
    sends only the 2 that never got an answer."""
    (tmp_path / "slowtask.py").write_text(SLOW_SCORING_TASK)
    n, hanging = 16, 2
    fake_server.latency = 0.05
    for i in range(hanging):
        fake_server.fail_when(marker(i), kind="hang")
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    env = cli_env(fake_server, PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    args = ["run", "--dataset", str(data), "--task", "slowtask:SlowScoring", "--model", "openai/m", "--output-dir",
            str(tmp_path / "out"), "--concurrency", "4", "--quiet"]
    proc = popen_cli(args, env, cwd=tmp_path)
    try:
        wait_for(lambda: fake_server.status_counts().get(200, 0) == n - hanging and fake_server.in_flight == hanging,
                 30, "14 answered requests and 2 hanging ones", proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and "no answered request was lost" in err, err
    assert cache_stats().entries == n - hanging
    fake_server.clear_faults()
    # The resume scores every sample at once (a plain qa run over the same requests): nothing answered is paid again.
    again = run_cli(["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(tmp_path / "out"),
                     "--run-id", "resumed", "--quiet"], env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert fake_server.status_counts().get(200) == n  # the 14 once, the 2 that hung once
    assert sum(1 for r in all_records(tmp_path / "out" / "resumed") if r.get("cached")) == n - hanging
