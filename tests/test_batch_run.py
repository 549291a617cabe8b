"""``--batch``: runs through OpenAI's Batch API and Anthropic's Message Batches, through the real SDKs
against the fake server's batch endpoints, in-process and as CLI subprocesses.

What is checked everywhere: every (sample, epoch) ends with exactly one ok record, no custom id is
ever submitted twice unless its first submission failed or expired, and no online request is sent.
"""

from __future__ import annotations

import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
from helpers import (
    all_records,
    cli_env,
    kill_9_when,
    only_run_dir,
    popen_cli,
    run_cli,
    run_config,
    wait_for,
    write_qa_dataset,
)

from evalledger import UsageError
from evalledger.ledger import batch_summary, read_journal
from evalledger.pricing import load_prices
from evalledger.run import estimate_experiment, run_experiment
from evalledger.samples import epoch_seed
from evalledger.study import StudyConfig, run_study

N = 6
OPENAI = "openai/gpt-4o-mini"
ANTHROPIC = "anthropic/claude-haiku-4-5"


@pytest.fixture
def batches(fake_server: Any) -> Any:
    """The fake's batch controller, with batches that move on in a few hundredths of a second."""
    fake_server.batches.step_seconds = 0.02
    return fake_server.batches


def dataset(tmp_path: Path, n: int = N) -> Path:
    return write_qa_dataset(tmp_path / "qa.jsonl", n)


def config(server: Any, data: Path, out: Path, model: str = OPENAI, **kw: Any) -> Any:
    base = dict(model=model, batch=True, cache=False)
    if model.startswith("anthropic/"):
        base["base_url"] = server.anthropic_base_url
    base.update(kw)
    return run_config(server, data, out, **base)


def ok_once(run_dir: Path, n: int = N) -> list[dict[str, Any]]:
    """The records, after checking every sample has exactly one ok record."""
    records = all_records(run_dir)
    ok = Counter(r["sample_id"] for r in records if r["status"] == "ok")
    assert ok == Counter({f"s{i:05d}": 1 for i in range(n)}), ok
    return records


def never_twice(batches: Any) -> None:
    assert batches.stats()["resubmitted"] == [], batches.stats()


def batch_args(data: Path, out: Path, *extra: str, model: str = OPENAI) -> list[str]:
    return ["run", "--dataset", str(data), "--model", model, "--output-dir", str(out), "--batch", "--no-cache",
            "--quiet", *extra]


def journal_events(run_dir: Path) -> list[str]:
    path = run_dir / "batches.jsonl"
    if not path.exists():
        return []
    return [json.loads(line)["event"] for line in path.read_text().splitlines() if line.startswith("{")]


# ----------------------------------------------------------------------------------- the plain flow

@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
def test_a_batch_run_writes_ordinary_records_billed_at_the_batch_price(fake_server: Any, batches: Any,
                                                                      tmp_path: Path, model: str) -> None:
    summary = run_experiment(config(fake_server, dataset(tmp_path), tmp_path / "out", model))
    assert summary.exit_code == 0 and summary.status == "complete", summary.message
    assert summary.requests == N  # one per request submitted in a batch
    records = ok_once(summary.run_dir)
    assert fake_server.request_count == 0  # nothing went online
    [created] = batches.created()
    assert len(created.custom_ids) == N and created.api == model.split("/")[0]
    never_twice(batches)
    price = load_prices().lookup(model)
    assert price is not None and price.batch is not None and price.batch.input == price.input / 2
    for r in records:
        assert r["correct"] is True and r["batch_ids"] == [created.id]
        tokens = r["usage"]
        assert r["cost_usd"] == pytest.approx(price.batch.cost(tokens["input_tokens"], tokens["output_tokens"]))
        assert r["paid"]["cost_usd"] == r["cost_usd"]
    assert journal_events(summary.run_dir)[:2] == ["intent", "created"]
    assert journal_events(summary.run_dir)[-1] == "collected"
    assert batch_summary(summary.run_dir)["collected"] == 1
    again = run_experiment(config(fake_server, dataset(tmp_path), tmp_path / "out", model))
    assert again.exit_code == 0 and again.skipped_completed == N and len(batches.created()) == 1


def test_batch_size_splits_the_pending_samples(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    summary = run_experiment(config(fake_server, dataset(tmp_path), tmp_path / "out", batch_size=4))
    assert summary.exit_code == 0, summary.message
    ok_once(summary.run_dir)
    assert sorted(len(b.custom_ids) for b in batches.created()) == [2, 4]
    never_twice(batches)


def test_the_estimate_and_the_budget_use_the_batch_price(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    data = dataset(tmp_path)
    online = estimate_experiment(config(fake_server, data, tmp_path / "out", batch=False))
    batched = estimate_experiment(config(fake_server, data, tmp_path / "out"))
    assert online.cost_usd is not None and batched.cost_usd == pytest.approx(online.cost_usd / 2)


def test_self_correction_sends_turn_two_in_a_later_batch(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    summary = run_experiment(config(fake_server, dataset(tmp_path), tmp_path / "out", task="self-correct"))
    assert summary.exit_code == 0, summary.message
    records = ok_once(summary.run_dir)
    first, second = batches.created()
    assert len(first.custom_ids) == N and len(second.custom_ids) == N
    assert not set(first.custom_ids) & set(second.custom_ids)
    for r in records:
        assert r["batch_ids"] == [first.id, second.id]
    calls = [json.loads(line) for line in (summary.run_dir / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 2 * N  # each paid call in the turn cache, as online
    never_twice(batches)


# ----------------------------------------------------------------------------------- failures inside a batch

def test_a_failed_request_becomes_an_error_record_and_is_sent_again_on_resume(fake_server: Any, batches: Any,
                                                                                tmp_path: Path) -> None:
    batches.fail_items("[[ANSWER:2]]", status=400, message="bad request for s2", times=1)
    out = tmp_path / "out"
    first = run_experiment(config(fake_server, dataset(tmp_path), out))
    assert first.exit_code == 1 and first.status == "errors"
    [error] = [r for r in all_records(first.run_dir) if r["status"] == "error"]
    assert error["sample_id"] == "s00002" and "bad request for s2" in error["error"]["message"]
    assert error["error"]["status_code"] == 400
    second = run_experiment(config(fake_server, dataset(tmp_path), out))
    assert second.exit_code == 0, second.message
    ok_once(second.run_dir)
    retried = [c for c, n in Counter(c for b in batches.created() for c in b.custom_ids).items() if n == 2]
    assert len(retried) == 1 and len(batches.created()) == 2  # only the failed one went again


def test_an_expired_batch_returns_its_unfinished_samples_to_a_new_batch(fake_server: Any, batches: Any,
                                                                        tmp_path: Path) -> None:
    batches.hold()
    out = tmp_path / "out"
    data = dataset(tmp_path)
    env = cli_env(fake_server)
    proc_args = batch_args(data, out)
    proc = popen_cli(proc_args, env, cwd=tmp_path)
    try:
        wait_for(lambda: [b.status for b in batches.created()] == ["in_progress"], 60, "the first batch", proc)
        batches.expire(done_fraction=0.5)
        batches.release()
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    ok_once(only_run_dir(out))
    first, second = batches.created()
    assert first.status == "expired" and len(second.custom_ids) == N - N // 2
    assert set(second.custom_ids) < set(first.custom_ids)  # the same calls, sent again once expired


def test_a_budget_stop_lets_the_batch_in_flight_finish(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    data = dataset(tmp_path)
    worst = estimate_experiment(config(fake_server, data, tmp_path / "out")).per_sample_cost
    assert worst
    # Room for the worst case of two samples and a half: the first batch (two) fits; while it is
    # in flight nothing more is admitted; after it the next batch must fit at its worst case too.
    summary = run_experiment(config(fake_server, data, tmp_path / "out", max_cost=worst * 2.5))
    assert summary.exit_code == 5 and summary.status == "budget", summary.message
    records = all_records(summary.run_dir)
    assert 2 <= len(records) < N and all(r["status"] == "ok" for r in records)
    assert sum(r["paid"]["cost_usd"] for r in records) <= worst * 2.5
    assert batches.total_items() == len(records)  # nothing submitted beyond what the budget admitted
    assert len(batches.created()[0].custom_ids) == 2
    assert summary.remaining == N - len(records)
    assert "--max-cost" in (summary.resume_command or "")


# ----------------------------------------------------------------------------------- submit and leave

def test_no_wait_submits_and_leaves_then_the_same_command_collects(fake_server: Any, batches: Any,
                                                                   tmp_path: Path) -> None:
    batches.hold()
    out = tmp_path / "out"
    args = batch_args(dataset(tmp_path), out, "--no-wait")
    env = cli_env(fake_server)
    left = run_cli(args, env, cwd=tmp_path)
    assert left.returncode == 0, left.stderr
    assert "1 batch pending; run the same command to collect" in left.stderr
    run_dir = only_run_dir(out)
    assert all_records(run_dir) == [] and journal_events(run_dir) == ["intent", "created", "state"]
    status = run_cli(["status", str(run_dir)], env, cwd=tmp_path)
    assert "provider batches: 1 batch: 1 open (validating 0/6)" in status.stdout or "1 open" in status.stdout, status.stdout
    stats = run_cli(["stats", str(run_dir)], env, cwd=tmp_path)
    assert "provider batches" in stats.stdout and "1 open" in stats.stdout, stats.stdout

    still = run_cli(args, env, cwd=tmp_path)  # not ended yet: still pending, nothing submitted again
    assert still.returncode == 0 and "1 batch pending" in still.stderr, still.stderr
    batches.release()
    wait_for(lambda: batches.created()[0].status == "completed", 30, "the batch to complete")
    done = run_cli(args, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "pending" not in done.stderr
    ok_once(run_dir)
    assert len(batches.created()) == 1 and batches.calls("create") == 1
    never_twice(batches)
    assert fake_server.request_count == 0
    assert batch_summary(run_dir)["collected"] == 1


def test_shards_have_their_own_batches_and_journals(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    data = dataset(tmp_path)
    for k in (1, 2):
        summary = run_experiment(config(fake_server, data, out, shard=(k, 2)))
        assert summary.exit_code == 0, summary.message
    run_dir = summary.run_dir
    ok_once(run_dir)
    assert sorted(p.name for p in run_dir.glob("batches*.jsonl")) == ["batches.shard-1-of-2.jsonl",
                                                                        "batches.shard-2-of-2.jsonl"]
    assert len(batches.created()) == 2 and all(b.metadata.get("evalledger_shard") for b in batches.created())
    never_twice(batches)


# ----------------------------------------------------------------------------------- kill -9 at every step

@pytest.mark.parametrize("model", [OPENAI, ANTHROPIC])
def test_kill_9_after_the_batch_is_created_before_its_id_is_journaled(fake_server: Any, batches: Any,
                                                                      tmp_path: Path, model: str) -> None:
    batches.hang_create = True  # the provider creates the batch; its reply never reaches the client
    out = tmp_path / "out"
    args = batch_args(dataset(tmp_path), out, model=model)
    env = cli_env(fake_server)
    kill_9_when(args, env, tmp_path, lambda: len(batches.created()) == 1, 60, "the batch to be created")
    run_dir = only_run_dir(out)
    assert journal_events(run_dir) == ["intent"]  # its id was never journaled
    batches.hang_create = False
    resumed = run_cli(args, env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "re-attached" in resumed.stderr
    ok_once(run_dir)
    assert len(batches.created()) == 1  # found on the provider, not created again
    never_twice(batches)
    assert fake_server.request_count == 0


def test_kill_9_while_polling_then_the_same_command_reattaches(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    batches.hold()
    out = tmp_path / "out"
    args = batch_args(dataset(tmp_path), out)
    env = cli_env(fake_server)

    def journaled() -> bool:
        dirs = [d for d in out.iterdir() if d.is_dir()] if out.exists() else []
        return bool(dirs) and "created" in journal_events(dirs[0])

    kill_9_when(args, env, tmp_path, journaled, 60, "the batch id in the journal", pause=0.5)
    batches.release()
    resumed = run_cli([*args, "--json"], env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["requests"] == 0  # the killed run submitted them all
    ok_once(only_run_dir(out))
    assert len(batches.created()) == 1 and batches.calls("create") == 1
    never_twice(batches)


def test_kill_9_while_collecting_the_results(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    batches.hang_results = True
    out = tmp_path / "out"
    args = batch_args(dataset(tmp_path), out)
    env = cli_env(fake_server)
    kill_9_when(args, env, tmp_path, lambda: batches.calls("results") >= 1, 60, "the results download")
    run_dir = only_run_dir(out)
    assert all_records(run_dir) == []
    batches.hang_results = False
    resumed = run_cli(args, env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ok_once(run_dir)
    assert len(batches.created()) == 1
    never_twice(batches)
    assert read_journal(run_dir / "batches.jsonl") and batch_summary(run_dir)["collected"] == 1


# ----------------------------------------------------------------------------------- refusals

def test_batch_is_refused_where_there_is_no_batch_api(fake_server: Any, tmp_path: Path) -> None:
    data = dataset(tmp_path)
    with pytest.raises(UsageError, match="--batch with --model local/smollm2"):
        run_config(fake_server, data, tmp_path / "out", model="local/smollm2", batch=True)
    with pytest.raises(UsageError, match="--no-wait applies to --batch runs"):
        run_config(fake_server, data, tmp_path / "out", no_wait=True)
    with pytest.raises(UsageError, match="--batch-size 0"):
        run_config(fake_server, data, tmp_path / "out", batch=True, batch_size=0)
    env = cli_env(fake_server)
    compatible = run_cli(["run", "--dataset", str(data), "--model", "vllm/some-model", "--base-url",
                          fake_server.openai_base_url, "--batch", "--output-dir", str(tmp_path / "out")], env,
                         cwd=tmp_path)
    assert compatible.returncode == 2 and "--batch with --model vllm/some-model" in compatible.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_study_runs_every_pair_through_batches_and_no_wait_leaves_them(fake_server: Any, batches: Any,
                                                                         tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_server.anthropic_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    data = dataset(tmp_path)
    options = {"output_dir": tmp_path / "out", "quiet": True, "batch": True, "cache": False}
    study = StudyConfig(models=(OPENAI, ANTHROPIC), datasets=(str(data),), run_options={**options, "no_wait": True})
    batches.hold()
    left = run_study(study, echo=lambda line: None)
    assert left.exit_code == 0 and [p.row["status"] for p in left.pairs] == ["batches-pending"] * 2
    assert sorted(b.api for b in batches.created()) == ["anthropic", "openai"]
    batches.release()
    wait_for(lambda: all(b.status in ("completed", "ended") for b in batches.created()), 30, "both batches")
    done = run_study(StudyConfig(models=(OPENAI, ANTHROPIC), datasets=(str(data),), run_options=options),
                     echo=lambda line: None)
    assert done.exit_code == 0 and [p.row["status"] for p in done.pairs] == ["complete"] * 2
    assert all(p.row["n"] == N and p.row["acc_t1"] == 1.0 for p in done.pairs)
    assert len(batches.created()) == 2 and fake_server.request_count == 0
    never_twice(batches)


def test_sigterm_while_waiting_leaves_the_batch_to_the_next_run(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    batches.hold()
    out = tmp_path / "out"
    args = batch_args(dataset(tmp_path), out, "--progress-interval", "0.2")
    args.remove("--quiet")
    env = cli_env(fake_server)
    proc = popen_cli(args, env, cwd=tmp_path)
    try:
        wait_for(lambda: any(b.status == "in_progress" for b in batches.created()), 60, "the batch", proc)
        time.sleep(1.0)  # a status line or two with the batch's state
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err
    assert "batches: 1 in_progress 0/6" in err  # the progress line shows the batch's state
    assert "1 batch pending; run the same command to collect" in err
    run_dir = only_run_dir(out)
    assert all_records(run_dir) == [] and "collected" not in journal_events(run_dir)
    batches.release()
    resumed = run_cli(batch_args(dataset(tmp_path), out), env, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    ok_once(run_dir)
    assert len(batches.created()) == 1
    never_twice(batches)


def test_the_response_cache_answers_a_batch_run_again_without_a_batch(fake_server: Any, batches: Any,
                                                                       tmp_path: Path) -> None:
    data = dataset(tmp_path)
    first = run_experiment(config(fake_server, data, tmp_path / "out", cache=True))
    assert first.exit_code == 0 and len(batches.created()) == 1
    again = run_experiment(config(fake_server, data, tmp_path / "out", cache=True, overwrite=True))
    assert again.exit_code == 0, again.message
    records = ok_once(again.run_dir)
    assert len(batches.created()) == 1  # every answer came from the cache: no second batch
    assert all(r["cached"] is True and r["paid"]["cost_usd"] == 0 and "batch_ids" not in r for r in records)


def test_an_anthropic_batch_still_in_progress_is_found_by_its_size(fake_server: Any, batches: Any,
                                                                   tmp_path: Path) -> None:
    batches.hold()
    batches.hang_create = True
    out = tmp_path / "out"
    args = batch_args(dataset(tmp_path), out, model=ANTHROPIC)
    env = cli_env(fake_server)
    kill_9_when(args, env, tmp_path, lambda: len(batches.created()) == 1, 60, "the batch to be created")
    batches.hang_create = False
    # Its custom ids cannot be read while it runs: the one batch of the intent's size is taken.
    left = run_cli([*args, "--no-wait"], env, cwd=tmp_path)
    assert left.returncode == 0 and "re-attached" in left.stderr and "1 batch pending" in left.stderr, left.stderr
    batches.release()
    wait_for(lambda: batches.created()[0].status == "ended", 30, "the batch to end")
    done = run_cli(args, env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    ok_once(only_run_dir(out))
    assert len(batches.created()) == 1
    never_twice(batches)


def test_a_create_refused_for_good_is_journaled_abandoned_and_its_samples_get_error_records(
        fake_server: Any, batches: Any, tmp_path: Path) -> None:
    batches.fail_create(status=400, times=1)  # e.g. a malformed batch: no retry fixes it
    out = tmp_path / "out"
    first = run_experiment(config(fake_server, dataset(tmp_path), out))
    assert first.exit_code == 1 and first.status == "errors", first.message
    records = all_records(first.run_dir)
    assert len(records) == N and all(r["status"] == "error" and r["error"]["status_code"] == 400 for r in records)
    assert journal_events(first.run_dir) == ["intent", "abandoned"] and batches.created() == []
    again = run_experiment(config(fake_server, dataset(tmp_path), out))  # the errors are sent again
    assert again.exit_code == 0, again.message
    ok_once(again.run_dir)
    assert len(batches.created()) == 1


def test_a_create_that_fails_then_succeeds_is_retried_without_a_second_batch(fake_server: Any, batches: Any,
                                                                          tmp_path: Path) -> None:
    batches.fail_create(status=500, times=2)
    summary = run_experiment(config(fake_server, dataset(tmp_path), tmp_path / "out"))
    assert summary.exit_code == 0, summary.message
    ok_once(summary.run_dir)
    assert len(batches.created()) == 1 and batches.calls("create") == 3
    assert batches.calls("list") == 2  # before each retry: was it created after all?
    never_twice(batches)


def test_a_batch_the_key_cannot_read_stops_the_run_and_stays_in_the_journal(fake_server: Any, batches: Any,
                                                                           tmp_path: Path) -> None:
    batches.hold()
    out = tmp_path / "out"
    left = run_experiment(config(fake_server, dataset(tmp_path), out, no_wait=True))
    assert left.status == "batches-pending"
    batches.fail_calls("retrieve", status=404, times=50)  # e.g. resumed with another organization's key
    stopped = run_experiment(config(fake_server, dataset(tmp_path), out))
    assert stopped.exit_code == 2 and stopped.status == "fatal", stopped.message
    assert "a batch this run submitted cannot be read" in stopped.message
    assert "1 batch pending" in stopped.message and "collected" not in journal_events(stopped.run_dir)
    assert len(batches.created()) == 1  # nothing submitted again


def test_repeats_in_batches_each_unit_once_with_its_own_seed(fake_server: Any, batches: Any, tmp_path: Path) -> None:
    summary = run_experiment(config(fake_server, dataset(tmp_path), tmp_path / "out", epochs=3))
    assert summary.exit_code == 0, summary.message
    records = all_records(summary.run_dir)
    units = Counter((r["sample_id"], r["epoch"]) for r in records if r["status"] == "ok")
    assert units == Counter({(f"s{i:05d}", e): 1 for i in range(N) for e in (1, 2, 3)})
    assert all(r["seed"] == epoch_seed(0, r["sample_id"], r["epoch"]) for r in records)
    [created] = batches.created()
    assert len(set(created.custom_ids)) == 3 * N  # one custom id per (sample, epoch)
    never_twice(batches)
    # What went on the wire: the batch's input file, read back through the SDK.
    client = openai.OpenAI(base_url=fake_server.openai_base_url, api_key="sk-test", max_retries=0)
    lines = client.files.content(client.batches.retrieve(created.id).input_file_id).text.splitlines()
    sent = Counter((json.loads(line)["body"]["messages"][-1]["content"].split(":")[0], json.loads(line)["body"]["seed"])
                   for line in lines)
    assert sent == Counter({(f"Question {i}", epoch_seed(0, f"s{i:05d}", e)): 1 for i in range(N) for e in (1, 2, 3)})


def test_an_intent_the_provider_cannot_be_asked_about_stays_pending_and_is_never_sent_again(
        fake_server: Any, batches: Any, tmp_path: Path) -> None:
    batches.hang_create = True
    out = tmp_path / "out"
    args = batch_args(dataset(tmp_path), out)
    env = cli_env(fake_server)
    kill_9_when(args, env, tmp_path, lambda: len(batches.created()) == 1, 60, "the batch to be created")
    batches.hang_create = False
    batches.fail_calls("list", status=500, times=1000)  # the provider cannot say whether it was created
    blind = run_cli(args, env, cwd=tmp_path)
    assert blind.returncode == 0 and "could not ask the provider" in blind.stderr, blind.stderr
    assert "1 batch pending" in blind.stderr and all_records(only_run_dir(out)) == []
    assert len(batches.created()) == 1  # not submitted again blindly
