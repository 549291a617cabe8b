"""``evalledger rescore`` / ``rescore_run``: stored responses scored again into a new run, sending nothing.

The source runs are made for real on the fake server, scored by a task with a deliberate
answer-extraction bug (it takes the reply's last character as the answer); the rescore with the
fixed scorer (``qa``) must give the records ``qa`` gives, without a request, leaving every byte of
the source as it was. The expected verdicts are worked out here from how the dataset is built,
not from the code under test.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import all_records, cli_env, run_cli, run_config

from evalledger import (
    RunExistsError,
    UsageError,
    compare_runs,
    get_stats,
    rescore_run,
    run_experiment,
    run_lifecycle,
    verify_run,
)
from evalledger.datasets import load_dataset
from evalledger.errors import DatasetError, LockHeldError
from evalledger.ledger import RunLedger
from evalledger.readers import run_dirs
from evalledger.records import epoch_of
from evalledger.tasks import QATask

TESTS = Path(__file__).resolve().parent
N = 14
#: Samples whose reply names another number than the answer (13 for 3, 15 for 5): wrong for qa, but
#: their last character is the answer's, so the buggy scorer counts them right.
WRONG_REPLY = {3: 13, 5: 15}

BUGGY_TASKS = '''
from evalledger.tasks import QATask, Score


class LastChar(QATask):
    """qa with an answer-extraction bug: the prediction is the reply's last character."""

    name = "lastchar"
    prompt_version = "lastchar-v1"

    def score(self, response, sample):
        target = super().score(response, sample).target
        prediction = response.strip()[-1:]
        return Score(prediction=prediction, target=target, score=prediction == target, correct=prediction == target)


class RaisesOnSeven(QATask):
    """qa whose scorer raises for the question about 7."""

    name = "raises-on-seven"

    def score(self, response, sample):
        if "What is 7 + 0?" in sample["question"]:
            raise ValueError("cannot score seven")
        return super().score(response, sample)
'''


def qa_right(i: int) -> bool:
    return i not in WRONG_REPLY


def buggy_right(i: int) -> bool:
    reply = WRONG_REPLY.get(i, i)
    return str(reply)[-1] == str(i)


def index_of(sample_id: str) -> int:
    return int(sample_id[1:])


@pytest.fixture
def tasks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path holding ``buggy_rescore_tasks`` (for CLI runs: PYTHONPATH)."""
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "buggy_rescore_tasks.py").write_text(BUGGY_TASKS)
    monkeypatch.syspath_prepend(str(d))
    monkeypatch.syspath_prepend(str(TESTS))
    sys.modules.pop("buggy_rescore_tasks", None)
    return d


def write_dataset(path: Path, n: int = N) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            reply = WRONG_REPLY.get(i, i)
            f.write(json.dumps({"id": f"s{i:05d}", "question": f"What is {i} + 0? [[ANSWER:{reply}]]",
                                "answer": f"{i} + 0 = {i}\n#### {i}"}) + "\n")
    return path


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (hidden ones too), by relative path; directories as ``dir``."""
    return {str(p.relative_to(root)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*"))}


def buggy_run(server: Any, tmp_path: Path, **kw: Any) -> Path:
    data = kw.pop("data", None) or write_dataset(tmp_path / "qa.jsonl")
    kw.setdefault("task", "buggy_rescore_tasks:LastChar")
    summary = run_experiment(run_config(server, data, tmp_path / "out", price_input=1.0, price_output=2.0, **kw))
    assert summary.exit_code == 0, summary.message
    return Path(summary.run_dir)


# ------------------------------------------------------------------------------ the main path
def test_rescore_fixes_a_buggy_scorer_sends_nothing_and_leaves_the_source_as_it_was(fake_server, tmp_path,
                                                                                    tasks_dir):
    source = buggy_run(fake_server, tmp_path)
    requests = fake_server.request_count
    assert requests == N
    before = snapshot(tmp_path / "out")
    source_stats = get_stats(source)
    assert source_stats["accuracy"] == pytest.approx(sum(map(buggy_right, range(N))) / N)

    report = rescore_run(source, task="qa")

    assert fake_server.request_count == requests  # nothing sent
    after = snapshot(tmp_path / "out")
    assert {k: v for k, v in after.items() if k.startswith(source.name + "/") or k == source.name} == before
    new = Path(report.run_dir)
    assert new.parent == source.parent and new.name == report.run_id
    assert report.run_id.startswith(f"{source.name}_rescored-qa-")
    assert (report.units, report.rescored, report.errors_copied, report.scoring_errors) == (N, N, 0, 0)
    assert report.right_to_wrong == sum(buggy_right(i) and not qa_right(i) for i in range(N)) == 2
    assert report.wrong_to_right == sum(qa_right(i) and not buggy_right(i) for i in range(N)) == 4
    assert report.old_accuracy == pytest.approx(sum(map(buggy_right, range(N))) / N)
    assert report.new_accuracy == pytest.approx(sum(map(qa_right, range(N))) / N)
    assert not report.already_done

    old = {r["sample_id"]: r for r in all_records(source)}
    records = all_records(new)
    assert [r["sample_id"] for r in records] == [f"s{i:05d}" for i in range(N)]  # dataset order
    for r in records:
        i, o = index_of(r["sample_id"]), old[r["sample_id"]]
        assert r["task"] == "qa" and r["status"] == "ok"
        assert r["correct"] is qa_right(i) and r["score"] is qa_right(i)
        assert r["prediction"] == str(WRONG_REPLY.get(i, i)) and r["target"] == str(i)
        for kept in ("response", "prompt", "usage", "cost_usd", "request_ids", "seed", "input_hash", "latency_s",
                     "started_at", "finished_at", "attempts", "model"):
            assert r[kept] == o[kept], kept
        assert o["paid"]["input_tokens"] > 0 and o["cost_usd"] > 0
        assert r["paid"] == {"input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0}

    manifest = RunLedger(new).read_manifest()
    source_manifest = RunLedger(source).read_manifest()
    assert manifest["run_id"] == report.run_id and manifest["task"] == "qa" and manifest["task_spec"] == "qa"
    assert manifest["dataset"] == source_manifest["dataset"] and manifest["sample_count"] == N
    assert manifest["config"]["model"] == source_manifest["config"]["model"]
    origin = manifest["rescored_from"]
    assert origin["run_id"] == source.name and origin["run_dir"] == str(source.resolve())
    assert origin["task"] == "lastchar" and origin["scorer"] == {"task": "qa", "prompt_version": QATask.prompt_version}
    assert origin["results_files"] == {"results.jsonl": hashlib.sha256((source / "results.jsonl").read_bytes())
                                       .hexdigest()}
    assert origin["rescored_at"]

    # Every reader takes it as a run: numbers from the new scores, a bill of nothing, complete, clean.
    stats = get_stats(new)
    assert stats["accuracy"] == pytest.approx(report.new_accuracy)
    assert stats["completed_samples"] == N and stats["total_samples"] == N
    assert stats["cost_usd"] == 0 and source_stats["cost_usd"] > 0
    assert run_lifecycle(new).state == "complete"
    assert verify_run(new).exit_code == 0, verify_run(new).findings
    assert verify_run(source).exit_code == 0
    comparison = compare_runs(source, new).comparisons[0]
    assert (comparison.a_right_b_wrong, comparison.a_wrong_b_right, comparison.n) == (2, 4, N)
    assert comparison.difference == pytest.approx(report.new_accuracy - report.old_accuracy)
    assert fake_server.request_count == requests


def test_the_same_rescore_again_is_already_done_and_writes_nothing(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path)
    first = rescore_run(source, task="qa")
    before = snapshot(tmp_path / "out")
    again = rescore_run(source, task="qa")
    assert again.already_done and again.run_id == first.run_id
    assert (again.right_to_wrong, again.wrong_to_right) == (first.right_to_wrong, first.wrong_to_right)
    assert snapshot(tmp_path / "out") == before
    # Another scorer is another run; the source's own (buggy) scorer gives it back unchanged.
    same = rescore_run(source)
    assert same.run_id != first.run_id and same.task == "lastchar"
    assert same.changed == 0 and same.new_accuracy == same.old_accuracy


def test_a_different_run_in_the_way_is_refused_then_moved_aside_with_overwrite(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path)
    # What a rescore killed while writing leaves: its staging directory, never listed as a run.
    leftover = tmp_path / "out" / ".fixed.rescoring-20260101T000000.000000Z" / "fixed"
    leftover.mkdir(parents=True)
    (leftover / "results.jsonl").write_text('{"sample_id":"s00000","status":"ok"}\n')
    assert [d.name for d in run_dirs(tmp_path / "out")] == [source.name]
    rescore_run(source, run_id="fixed")  # the buggy scorer: not what --task qa would write
    assert not leftover.parent.exists()
    taken = tmp_path / "out" / "fixed"
    before = snapshot(taken)
    with pytest.raises(RunExistsError, match="another scorer.*--overwrite"):
        rescore_run(source, task="qa", run_id="fixed")
    assert snapshot(taken) == before
    report = rescore_run(source, task="qa", run_id="fixed", overwrite=True)
    assert report.moved_aside and snapshot(Path(report.moved_aside)) == before
    assert all(r["task"] == "qa" for r in all_records(taken))
    with pytest.raises(UsageError, match="source run itself"):
        rescore_run(source, task="qa", run_id=source.name, overwrite=True)
    assert verify_run(source).exit_code == 0


def test_repeats_keep_their_epochs_and_seeds(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path, epochs=3)
    requests = fake_server.request_count
    assert requests == 3 * N
    report = rescore_run(source, task="qa")
    assert fake_server.request_count == requests
    assert report.units == report.rescored == 3 * N
    assert report.wrong_to_right == 3 * 4 and report.right_to_wrong == 3 * 2
    old = {(r["sample_id"], epoch_of(r)): r for r in all_records(source)}
    records = all_records(Path(report.run_dir))
    assert [(r["sample_id"], r["epoch"]) for r in records] == [(f"s{i:05d}", e) for i in range(N) for e in (1, 2, 3)]
    for r in records:
        assert r["seed"] == old[(r["sample_id"], r["epoch"])]["seed"]
        assert r["correct"] is qa_right(index_of(r["sample_id"]))
    stats = get_stats(report.run_dir)
    assert stats["total_samples"] == 3 * N and stats["epochs"] == 3
    assert stats["repeats"]["mean_accuracy"] == pytest.approx(sum(map(qa_right, range(N))) / N)
    assert verify_run(report.run_dir).exit_code == 0


def test_a_self_correct_run_has_its_turns_scored_again(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path, task="self-correct:buggy_rescore_tasks:LastChar")
    requests = fake_server.request_count
    assert requests == 2 * N
    before = snapshot(source)
    with pytest.raises(UsageError, match="makes 1 model call.*holds 2"):
        rescore_run(source, task="qa")  # one call where the run made two: it would score turn 1 only
    report = rescore_run(source, task="self-correct:qa")
    assert fake_server.request_count == requests and snapshot(source) == before
    old = {r["sample_id"]: r for r in all_records(source)}
    for r in all_records(Path(report.run_dir)):
        i, extra = index_of(r["sample_id"]), r["extra"]
        assert r["task"] == "self-correct" and r["response"] == old[r["sample_id"]]["response"]
        # The fake server gives the same answer in both turns: each turn is right iff qa says so.
        assert [t["correct"] for t in extra["turns"]] == [qa_right(i)] * 2
        assert [t["response"] for t in extra["turns"]] == old[r["sample_id"]]["response"]
        assert extra["correct_before"] is extra["correct_after"] is r["correct"] is qa_right(i)
        assert extra["transition"] == ("correct→correct" if qa_right(i) else "incorrect→incorrect")
        assert old[r["sample_id"]]["extra"]["correct_before"] is buggy_right(i)
    stats = get_stats(report.run_dir)
    assert stats["transitions"]["correct→correct"] == sum(map(qa_right, range(N)))
    assert stats["accuracy_before"] == pytest.approx(sum(map(qa_right, range(N))) / N)
    assert compare_runs(source, report.run_dir).comparisons[0].self_correction is not None


def test_a_sharded_run_becomes_one_results_file(fake_server, tmp_path, tasks_dir):
    data = write_dataset(tmp_path / "qa.jsonl")
    for k in (1, 2):
        buggy_run(fake_server, tmp_path, data=data, shard=(k, 2), run_id="sharded")
    source = tmp_path / "out" / "sharded"
    report = rescore_run(source, task="qa")
    new = Path(report.run_dir)
    assert sorted(p.name for p in new.glob("results*.jsonl")) == ["results.jsonl"]
    assert sorted(r["sample_id"] for r in all_records(new)) == [f"s{i:05d}" for i in range(N)]
    assert report.new_accuracy == pytest.approx(sum(map(qa_right, range(N))) / N)
    assert verify_run(new).exit_code == 0 and run_lifecycle(new).state == "complete"


def test_error_records_are_copied_as_errors_and_bill_nothing(fake_server, tmp_path, tasks_dir):
    fake_server.fail_when("[[ANSWER:7]]", 400)
    data = write_dataset(tmp_path / "qa.jsonl")
    summary = run_experiment(run_config(fake_server, data, tmp_path / "out", task="buggy_rescore_tasks:LastChar"))
    assert summary.errors == 1
    report = rescore_run(summary.run_dir, task="qa")
    assert (report.units, report.rescored, report.errors_copied) == (N, N - 1, 1)
    errors = [r for r in all_records(Path(report.run_dir)) if r["status"] == "error"]
    assert [r["sample_id"] for r in errors] == ["s00007"] and errors[0]["error"]["status_code"] == 400
    assert errors[0]["task"] == "qa" and errors[0]["correct"] is None
    assert run_lifecycle(report.run_dir).state == "incomplete"
    assert get_stats(report.run_dir)["error_count"] == 1


def test_a_scorer_that_raises_makes_an_error_record_as_a_run_would(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path)
    report = rescore_run(source, task="buggy_rescore_tasks:RaisesOnSeven")
    assert (report.rescored, report.scoring_errors, report.new_correct) == (N, 1, sum(map(qa_right, range(N))) - 1)
    errors = [r for r in all_records(Path(report.run_dir)) if r["status"] == "error"]
    assert [r["sample_id"] for r in errors] == ["s00007"]
    assert errors[0]["error"] == {"type": "ValueError", "message": "cannot score seven", "retryable": False,
                                  "status_code": None}
    assert errors[0]["response"] == "The answer is 7.\n#### 7" and errors[0]["correct"] is None
    assert run_lifecycle(report.run_dir).state == "incomplete"


def test_a_few_shot_run_keeps_its_exemplars(fake_server, tmp_path):
    summary = run_experiment(run_config(fake_server, "gsm8k", tmp_path / "out", limit=3, fewshot=2))
    assert summary.ok == 3 and fake_server.request_count == 3
    report = rescore_run(summary.run_dir)
    assert fake_server.request_count == 3
    old = {r["sample_id"]: r for r in all_records(Path(summary.run_dir))}
    for r in all_records(Path(report.run_dir)):
        assert len(r["fewshot_ids"]) == 2 and r["fewshot_ids"] == old[r["sample_id"]]["fewshot_ids"]
        assert r["prompt"] == old[r["sample_id"]]["prompt"] and r["correct"] is False  # the fake answers 42
    manifest = RunLedger(report.run_dir).read_manifest()
    assert manifest["fewshot"] == RunLedger(summary.run_dir).read_manifest()["fewshot"]
    assert verify_run(report.run_dir).exit_code == 0


# ------------------------------------------------------------------------------ refusals
def test_a_changed_dataset_is_refused_and_a_copy_of_the_original_is_accepted(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path)
    data = tmp_path / "qa.jsonl"
    original = hashlib.sha256(data.read_bytes()).hexdigest()
    copy = tmp_path / "moved" / "qa-copy.jsonl"
    copy.parent.mkdir()
    shutil.copy(data, copy)
    with open(data, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "extra", "question": "q", "answer": "#### 1"}) + "\n")
    changed = hashlib.sha256(data.read_bytes()).hexdigest()
    before = snapshot(tmp_path / "out")
    with pytest.raises(DatasetError) as e:
        rescore_run(source, task="qa")
    assert str(data) in e.value.message and original in e.value.message and changed in e.value.message
    data.unlink()
    with pytest.raises(DatasetError, match=f"qa.jsonl.*{original}.*--dataset"):
        rescore_run(source, task="qa")
    assert snapshot(tmp_path / "out") == before
    with pytest.raises(DatasetError, match="is not the one"):
        rescore_run(source, task="qa", dataset=write_dataset(tmp_path / "other.jsonl", n=N + 1))
    report = rescore_run(source, task="qa", dataset=copy)
    assert report.new_accuracy == pytest.approx(sum(map(qa_right, range(N))) / N)
    assert RunLedger(report.run_dir).read_manifest()["dataset"]["path"] == str(copy.resolve())
    assert verify_run(report.run_dir).exit_code == 0


def test_refusals_name_what_is_wrong_and_change_nothing(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path)
    before = snapshot(tmp_path / "out")
    with pytest.raises(UsageError, match="--task 'nope': unknown task"):
        rescore_run(source, task="nope")
    with pytest.raises(UsageError, match="--allow-code-execution"):
        rescore_run(source, task="humaneval")
    with pytest.raises(UsageError, match="two_turn_task:TwoTurn.*overrides run"):
        rescore_run(source, task="two_turn_task:TwoTurn")
    with pytest.raises(UsageError, match="asks for more model calls than the 1 reply"):
        rescore_run(source, task="self-correct:qa")
    with pytest.raises(DatasetError, match="cannot be used by task 'mcq'|choices"):
        rescore_run(source, task="mcq")
    with pytest.raises(UsageError, match="--run-id"):
        rescore_run(source, task="qa", run_id="../escape")
    # A writer at work: its records are still coming.
    with RunLedger(source).open_writer(), pytest.raises(LockHeldError, match="being written right now"):
        rescore_run(source, task="qa")
    assert snapshot(tmp_path / "out") == before
    assert fake_server.request_count == N


def test_humaneval_needs_the_flag_and_runs_the_tests_again(fake_server, tmp_path):
    rows = load_dataset("humaneval", limit=2).samples

    def first_passes(body: dict[str, Any]) -> str:
        """The canonical solution for the first problem; a function that returns None for the other."""
        text = body["messages"][-1]["content"]
        row = next(s.fields for s in rows if s.fields["prompt"].strip("\n") in text)
        body_code = row["canonical_solution"] if row is rows[0].fields else "    return None\n"
        return f"```python\n{row['prompt']}{body_code}```\n"

    fake_server.responder = first_passes
    summary = run_experiment(run_config(fake_server, "humaneval", tmp_path / "out", limit=2, allow_code_execution=True))
    assert summary.ok == 2 and fake_server.request_count == 2
    with pytest.raises(UsageError, match="--allow-code-execution"):
        rescore_run(summary.run_dir)
    report = rescore_run(summary.run_dir, allow_code_execution=True)
    assert fake_server.request_count == 2 and report.new_correct == report.old_correct == 1 and report.changed == 0
    records = {r["sample_id"]: r for r in all_records(Path(report.run_dir))}
    assert records[rows[0].id]["correct"] is True and records[rows[0].id]["extra"]["execution"]["exit_code"] == 0
    assert records[rows[1].id]["correct"] is False and records[rows[1].id]["extra"]["execution"]["exit_code"] == 1


# ------------------------------------------------------------------------------ the command line
def test_cli_rescore_prints_the_summary_and_json_and_works_with_the_other_commands(fake_server, tmp_path, tasks_dir):
    source = buggy_run(fake_server, tmp_path)
    before = snapshot(source)
    env = cli_env(fake_server, PYTHONPATH=f"{tasks_dir}:{TESTS}")
    out = tmp_path / "out"
    r = run_cli(["rescore", source.name, "--task", "qa", "--output-dir", str(out)], env)
    assert r.returncode == 0, r.stderr
    old, new = sum(map(buggy_right, range(N))), sum(map(qa_right, range(N)))
    assert f"accuracy: {100 * old / N:.1f}% ({old}/{N}) → {100 * new / N:.1f}% ({new}/{N})" in r.stdout
    assert "correctness changed: 6 (right→wrong 2, wrong→right 4)" in r.stdout
    assert "requests sent: 0" in r.stdout
    r = run_cli(["rescore", str(source), "--task", "qa", "--json"], env)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["already_done"] is True and report["changed"] == 6
    new_id = report["run_id"]
    for args in (["stats", new_id], ["list"], ["verify", new_id], ["compare", source.name, new_id],
                 ["report", new_id, "-o", str(tmp_path / "r.html")],
                 ["export", new_id, "--format", "jsonl", "-o", str(tmp_path / "e.jsonl")]):
        r = run_cli([*args, "--output-dir", str(out)], env)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    assert new_id in run_cli(["list", "--output-dir", str(out)], env).stdout

    # Into another directory, with another run id; then refused as taken by another scorer.
    elsewhere = tmp_path / "rescored"
    r = run_cli(["rescore", str(source), "--output-dir", str(elsewhere), "--run-id", "mine"], env)
    assert r.returncode == 0, r.stderr
    assert (elsewhere / "mine" / "results.jsonl").exists()
    r = run_cli(["rescore", str(source), "--task", "qa", "--output-dir", str(elsewhere), "--run-id", "mine"], env)
    assert r.returncode == 2 and r.stderr.startswith("error: run directory") and "--overwrite" in r.stderr
    r = run_cli(["rescore", str(source), "--task", "humaneval"], env)
    assert r.returncode == 2 and "--allow-code-execution" in r.stderr
    assert snapshot(source) == before and fake_server.request_count == N
