"""Cost on every record, the --max-cost budget, estimates, and turn-level resume of multi-turn tasks."""

from __future__ import annotations

import json
import re
import shlex
import signal
import time
from pathlib import Path

import pytest
from helpers import all_records, cli_env, marker, popen_cli, run_cli, run_config, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.errors import UsageError
from evalledger.readers import get_stats
from evalledger.run import estimate_experiment, run_experiment

TESTS = Path(__file__).resolve().parent


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    return run_config(server, data, out, **kw)


def test_cost_on_every_record_from_flags(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", price_input=2.0, price_output=8.0))
    recs = all_records(s.run_dir)
    for r in recs:
        u = r["usage"]
        assert r["cost_usd"] == pytest.approx((u["input_tokens"] * 2.0 + u["output_tokens"] * 8.0) / 1e6)
        assert r["paid"]["cost_usd"] == pytest.approx(r["cost_usd"])
    assert get_stats(s.run_dir)["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in recs))


def test_known_model_is_priced_from_the_table_and_unknown_is_unknown(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    s = run_experiment(cfg(fake_server, data, tmp_path / "a", model="openai/gpt-4o-mini"))
    r = all_records(s.run_dir)[0]
    assert r["cost_usd"] == pytest.approx((r["usage"]["input_tokens"] * 0.15 + r["usage"]["output_tokens"] * 0.60) / 1e6)
    s2 = run_experiment(cfg(fake_server, data, tmp_path / "b", model="openai/no-such-priced-model"))
    assert all(r["cost_usd"] is None for r in all_records(s2.run_dir))
    assert get_stats(s2.run_dir)["cost_usd"] is None  # unknown, never 0


def test_prices_file_overrides_the_table(fake_server, tmp_path):
    prices = tmp_path / "p.toml"
    prices.write_text('[openai]\n"test-model" = { input = 1000.0, output = 0.0 }\n')
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", prices_file=str(prices)))
    r = all_records(s.run_dir)[0]
    assert r["cost_usd"] == pytest.approx(r["usage"]["input_tokens"] * 1000.0 / 1e6)
    prices.write_text("not toml [")
    with pytest.raises(UsageError, match="--prices .*not valid TOML"):
        run_experiment(cfg(fake_server, data, tmp_path / "out2", prices_file=str(prices)))


def test_budget_stops_before_exceeding_then_resumes_with_more(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 40)
    out = tmp_path / "out"
    price = dict(price_input=1000.0, price_output=1000.0)  # expensive, so a few samples cost cents
    # the probe stores nothing in the response cache: the run below pays for every sample
    probe = run_experiment(cfg(fake_server, data, tmp_path / "probe", limit=1, cache=False, **price))
    per_sample = all_records(probe.run_dir)[0]["cost_usd"]
    budget = per_sample * 10.5
    s = run_experiment(cfg(fake_server, data, out, max_cost=budget, **price))
    assert s.exit_code == 5 and s.status == "budget"
    spent = get_stats(s.run_dir)["cost_usd"]
    assert spent <= budget and 7 <= s.ok <= 10, (spent, budget, s.ok)
    assert f"${budget:,.4f}" in s.message and "--max-cost" in s.message
    assert s.resume_command and "--max-cost" in s.resume_command
    # the same budget again: earlier spend counts, so nothing more is sent
    before = fake_server.request_count
    s2 = run_experiment(cfg(fake_server, data, out, max_cost=budget, **price))
    assert s2.exit_code == 5 and fake_server.request_count - before <= 1
    s3 = run_experiment(cfg(fake_server, data, out, max_cost=budget * 10, **price))
    assert s3.exit_code == 0
    assert get_stats(s.run_dir)["completed_samples"] == 40


def test_max_cost_without_a_price_is_refused(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    with pytest.raises(UsageError, match="--max-cost needs a price"):
        run_experiment(cfg(fake_server, data, tmp_path / "out", model="openai/unpriced", max_cost=1.0))
    assert fake_server.request_count == 0 and not (tmp_path / "out").exists()


def test_estimate_is_within_20_percent_and_refines_from_observed(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 60)
    out = tmp_path / "out"
    config = cfg(fake_server, data, out, max_tokens=10, price_input=1.0, price_output=1.0)
    first = estimate_experiment(config.replace(limit=20))
    assert first.pending == 20 and "prompt lengths" in first.basis
    s = run_experiment(config.replace(limit=20))
    actual_in = sum(r["usage"]["input_tokens"] for r in all_records(s.run_dir))
    assert abs(first.input_tokens - actual_in) <= 0.2 * actual_in, (first.input_tokens, actual_in)
    # after 20 samples the projection uses their averages: compare with what the other 40 really use
    refined = estimate_experiment(config)
    assert refined.pending == 40 and "observed average of 20" in refined.basis
    before = {r["sample_id"] for r in all_records(s.run_dir)}
    run_experiment(config)
    rest = [r for r in all_records(s.run_dir) if r["sample_id"] not in before]
    for key, est in (("input_tokens", refined.input_tokens), ("output_tokens", refined.output_tokens)):
        actual = sum(r["usage"][key] for r in rest)
        assert abs(est - actual) <= 0.2 * actual, (key, est, actual)


def test_estimate_cli_and_preflight_line(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    env = cli_env(fake_server)
    r = run_cli(["estimate", "--dataset", str(data), "--model", "openai/gpt-4o-mini", "--json"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    est = json.loads(r.stdout)
    assert est["pending"] == 5 and est["cost_usd"] > 0 and fake_server.request_count == 0
    r = run_cli(["run", "--dataset", str(data), "--model", "openai/gpt-4o-mini", "--output-dir", str(tmp_path / "o")],
                env, cwd=tmp_path)
    assert r.returncode == 0 and "estimate: 5 pending samples" in r.stderr


# ----------------------------------------------------------------------------------- turn-level resume


def test_two_turn_task_records_both_turns_and_persists_calls(fake_server, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(TESTS))
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out", task="two_turn_task:TwoTurn", price_input=1.0,
                           price_output=1.0))
    assert s.exit_code == 0 and fake_server.request_count == 8
    recs = all_records(s.run_dir)
    assert all(len(r["response"]) == 2 and r["paid"]["cost_usd"] == 0 for r in recs)
    calls = [json.loads(x) for x in (s.run_dir / "calls.jsonl").read_text().splitlines()]
    assert len(calls) == 8
    # the bill is counted once: calls file, not the records' sample totals
    assert get_stats(s.run_dir)["cost_usd"] == pytest.approx(sum(c["cost_usd"] for c in calls))
    assert sum(r["cost_usd"] for r in recs) == pytest.approx(sum(c["cost_usd"] for c in calls))


def test_kill_between_turns_resume_pays_only_turn_two(fake_server, tmp_path):
    n = 6
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    env = cli_env(fake_server, PYTHONPATH=str(TESTS))
    fake_server.fail_when("REVIEW-TURN", kind="hang", hang_seconds=60)  # turn 2 never answers
    args = ["run", "--dataset", str(data), "--model", "openai/m", "--task", "two_turn_task:TwoTurn",
            "--output-dir", str(tmp_path / "o"), "--run-id", "tt", "--concurrency", str(n), "--quiet"]
    proc = popen_cli(args, env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while fake_server.count_for("REVIEW-TURN") < n:  # every sample is waiting in turn 2
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline
            time.sleep(0.02)
        calls = tmp_path / "o" / "tt" / "calls.jsonl"
        assert calls.read_text().count("\n") == n  # turn 1 of each sample is on disk
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    fake_server.clear_faults()
    r = run_cli(args, env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for i in range(n):
        turn1 = sum(1 for q in fake_server.requests if marker(i) in q.text and "REVIEW-TURN" not in q.text)
        assert turn1 == 1, f"sample {i}: turn 1 paid {turn1} times"
    recs = all_records(tmp_path / "o" / "tt")
    assert len(recs) == n and all(r["status"] == "ok" for r in recs)
    assert all(r["turn_usage"][0]["replayed"] is True and r["turn_usage"][1]["replayed"] is False for r in recs)


def test_after_a_budget_stop_the_resume_command_finishes_and_agrees_with_estimate(fake_server, tmp_path):
    """The printed resume command must not stop again at once (it raises --max-cost to what the
    samples left need), and the stop message projects the same amount as `estimate` for them."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 30)
    out = tmp_path / "out"
    price = dict(price_input=1000.0, price_output=1000.0)
    # the probe stores nothing in the response cache: the run below pays for every sample
    probe = run_experiment(cfg(fake_server, data, tmp_path / "probe", limit=1, cache=False, **price))
    per_sample = all_records(probe.run_dir)[0]["cost_usd"]
    s = run_experiment(cfg(fake_server, data, out, max_cost=per_sample * 8.5, **price))
    assert s.exit_code == 5
    left = s.remaining
    projected = float(re.search(r"about \$([0-9,.]+) more", s.message).group(1).replace(",", ""))
    est = estimate_experiment(cfg(fake_server, data, out, **price))
    assert est.pending == left
    assert projected == pytest.approx(est.cost_usd, rel=0.01, abs=1e-4), (s.message, est.line())

    argv = shlex.split(s.resume_command)
    assert argv[:2] == ["evalledger", "run"]
    new_cap = float(argv[argv.index("--max-cost") + 1])
    assert new_cap > per_sample * 8.5
    r = run_cli(argv[1:], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert get_stats(s.run_dir)["completed_samples"] == 30
    assert get_stats(s.run_dir)["cost_usd"] <= new_cap + 1e-9


def test_an_unpriced_model_is_unknown_in_list_and_stats_never_zero(fake_server, tmp_path):
    """A vllm/ model (an OpenAI-compatible server the price table knows nothing of)."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    r = run_cli(["run", "-d", str(data), "-m", "vllm/served-model", "--base-url", fake_server.openai_base_url,
                 "--output-dir", str(out), "-q", "--json"], env)
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    listed = run_cli(["list", "--output-dir", str(out)], env)
    row = next(line for line in listed.stdout.splitlines() if line.startswith(run_id))
    assert " ? " in row and "0.0000" not in row, row
    shown = run_cli(["stats", run_id, "--output-dir", str(out)], env).stdout
    assert re.search(r"^cost \(USD\)\s+unknown$", shown, re.M), shown
    assert json.loads(run_cli(["stats", run_id, "--output-dir", str(out), "--json"], env).stdout)["cost_usd"] is None
    assert "cost ?;" in r.stderr and "$0.0000" not in r.stderr  # the run's own summary line
