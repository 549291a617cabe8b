"""Self-correction: the two-turn conversation on the wire, transitions from known answers, the
review prompt (built-in and replaced), and the prompt version in the run ID. End to end through
the real SDKs and the loopback fake server."""

from __future__ import annotations

import asyncio
import gzip
import json
import random
import re
from pathlib import Path
from typing import Any

import pytest
from fakeserver import message_texts
from helpers import all_records, cli_env, run_cli, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.datasets import BUILTIN_DATASETS
from evalledger.errors import UsageError
from evalledger.run import prepare_run, run_experiment
from evalledger.samples import Sample
from evalledger.tasks import MCQTask, QATask, SelfCorrectTask, load_task
from evalledger.tasks import self_correct as sc
from evalledger.tasks.qa import SYSTEM_PROMPT
from evalledger.tasks.self_correct import REVIEW_PROMPT, transition

# Sample i's plan, by i % 4: is the answer right on turn 1, and on turn 2?
PLAN = {0: (True, True), 1: (True, False), 2: (False, True), 3: (False, False)}
EXPECTED = {0: "correct→correct", 1: "correct→incorrect", 2: "incorrect→correct", 3: "incorrect→incorrect"}
_MARKER = re.compile(r"\[\[ANSWER:(\d+)\]\]")


def turn_of(body: dict[str, Any]) -> int:
    """1 for the first question, 2 for the review: one assistant message (the turn-1 answer) more."""
    return 1 + sum(1 for m in body["messages"] if m["role"] == "assistant")


def planned_reply(body: dict[str, Any]) -> str:
    """Right or wrong per PLAN, told apart by turn; wrong answers are off by 1000."""
    i = next(int(m.group(1)) for _role, text in message_texts(body) if (m := _MARKER.search(text)))
    turn = turn_of(body)
    right = PLAN[i % 4][turn - 1]
    answer = i if right else i + 1000
    return f"Turn {turn}: I think it is {answer}.\n#### {answer}"


def cfg(server, data: Path | str, out: Path, **kw) -> RunConfig:
    base: dict[str, Any] = {"dataset": str(data), "model": "openai/test-model", "output_dir": out,
                            "base_url": server.openai_base_url, "api_key": "sk-test", "quiet": True,
                            "concurrency": 4, "max_retry_wait": 0.2, "task": "self-correct"}
    base.update(kw)
    return RunConfig(**base)


def requests_for(server, i: int) -> list[Any]:
    """The requests for sample i, in turn order."""
    reqs = [r for r in server.requests if f"[[ANSWER:{i}]]" in r.text]
    return sorted(reqs, key=lambda r: turn_of(r.body))


def test_transition_names() -> None:
    assert transition(True, True) == "correct→correct"
    assert transition(True, False) == "correct→incorrect"
    assert transition(False, True) == "incorrect→correct"
    assert transition(False, False) == "incorrect→incorrect"


def test_two_turn_conversation_on_the_wire_and_transitions(fake_server, tmp_path) -> None:
    fake_server.responder = planned_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s.exit_code == 0 and s.ok == 8 and s.errors == 0
    assert fake_server.request_count == 16  # two turns per sample, no more

    for i in range(8):
        question = f"Question {i}: what is {i} + 0? [[ANSWER:{i}]]"
        first, second = requests_for(fake_server, i)
        turn1 = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
        assert first.body["messages"] == turn1
        reply1 = planned_reply(first.body)
        assert second.body["messages"] == [
            *turn1,
            {"role": "assistant", "content": reply1},
            {"role": "user", "content": REVIEW_PROMPT},
        ]

    records = {r["sample_id"]: r for r in all_records(s.run_dir)}
    for i in range(8):
        rec = records[f"s{i:05d}"]
        right1, right2 = PLAN[i % 4]
        extra = rec["extra"]
        assert extra["transition"] == EXPECTED[i % 4]
        assert extra["correct_before"] is right1 and extra["correct_after"] is right2
        assert extra["base_task"] == "qa"
        t1, t2 = extra["turns"]
        assert t1["prediction"] == str(i if right1 else i + 1000) and t1["correct"] is right1 and t1["score"] is right1
        assert t2["prediction"] == str(i if right2 else i + 1000) and t2["correct"] is right2 and t2["score"] is right2
        assert t1["response"].startswith("Turn 1:") and t2["response"].startswith("Turn 2:")
        assert rec["response"] == [t1["response"], t2["response"]]
        # The sample's own score is the final answer's.
        assert rec["correct"] is right2 and rec["prediction"] == t2["prediction"] and rec["target"] == str(i)
        assert rec["task"] == "self-correct"
        assert rec["prompt"][-1] == {"role": "user", "content": REVIEW_PROMPT}

    # Resume pays for nothing.
    again = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert again.run_id == s.run_id and again.requests == 0 and fake_server.request_count == 16


def test_mcq_base_from_the_dataset_default_and_explicit(fake_server, tmp_path) -> None:
    """Plain self-correct on an MCQ dataset wraps mcq; self-correct:mcq is the same experiment."""
    with open(BUILTIN_DATASETS["mmlu-elementary-math"].path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:4]
    answers = {row["question"].strip(): row["answer"] for row in rows}
    wrong = {"A": "B", "B": "C", "C": "D", "D": "A"}

    def reply(body: dict[str, Any]) -> str:
        question = body["messages"][0]["content"].split("\n")[0].strip()
        correct = answers[question]
        # Wrong first, right after review: every sample goes incorrect→correct.
        return f"Answer: {wrong[correct]}" if turn_of(body) == 1 else f"On review, Answer: {correct}"

    fake_server.responder = reply
    out = tmp_path / "out"
    s = run_experiment(cfg(fake_server, "mmlu-elementary-math", out, limit=4))
    assert s.exit_code == 0 and s.ok == 4 and fake_server.request_count == 8
    first = next(r for r in fake_server.requests if turn_of(r.body) == 1)
    assert len(first.body["messages"]) == 1 and first.body["messages"][0]["role"] == "user"
    assert "Answer with the letter of the correct option." in first.body["messages"][0]["content"]
    recs = all_records(s.run_dir)
    assert {r["extra"]["transition"] for r in recs} == {"incorrect→correct"}
    assert all(r["extra"]["base_task"] == "mcq" for r in recs)
    assert all(r["extra"]["turns"][1]["prediction"] == r["target"] for r in recs)
    assert s.stats["accuracy"] == 1.0

    explicit = run_experiment(cfg(fake_server, "mmlu-elementary-math", out, limit=4, task="self-correct:mcq"))
    assert explicit.run_id == s.run_id and explicit.requests == 0


def test_prompt_version_is_in_the_run_id(fake_server, tmp_path, monkeypatch) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    out = tmp_path / "out"
    p = prepare_run(cfg(fake_server, data, out))
    assert p.identity["task"] == "self-correct"
    assert p.identity["prompt_version"] == "review-v1+qa:qa-v1"
    assert p.run_id.startswith("qa_openai-test-model_self-correct_")
    plain_qa = prepare_run(cfg(fake_server, data, out, task="qa"))
    mcq_base_version = SelfCorrectTask(MCQTask()).prompt_version
    assert mcq_base_version == "review-v1+mcq:mcq-v1"
    assert plain_qa.run_id != p.run_id

    # A new review prompt version gives a new run ID ...
    monkeypatch.setattr(sc, "REVIEW_PROMPT_VERSION", "review-v2")
    bumped = prepare_run(cfg(fake_server, data, out))
    assert bumped.identity["prompt_version"] == "review-v2+qa:qa-v1" and bumped.run_id != p.run_id
    monkeypatch.undo()
    # ... and so does a new version of the base task's prompt.
    monkeypatch.setattr(QATask, "prompt_version", "qa-v2")
    base_bumped = prepare_run(cfg(fake_server, data, out))
    assert base_bumped.identity["prompt_version"] == "review-v1+qa:qa-v2" and base_bumped.run_id != p.run_id


def test_review_prompt_file_changes_the_wire_text_and_the_run_id(fake_server, tmp_path) -> None:
    fake_server.responder = planned_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    custom = tmp_path / "review.txt"
    custom.write_text("Check your work step by step. End with '#### <number>'.\n", encoding="utf-8")

    default = prepare_run(cfg(fake_server, data, out))
    s = run_experiment(cfg(fake_server, data, out, review_prompt=str(custom)))
    assert s.exit_code == 0 and s.ok == 4
    assert s.run_id != default.run_id
    reviews = [r.body["messages"][-1] for r in fake_server.requests if turn_of(r.body) == 2]
    assert len(reviews) == 4
    assert all(m == {"role": "user", "content": "Check your work step by step. End with '#### <number>'."}
               for m in reviews)
    assert not any(REVIEW_PROMPT in r.text for r in fake_server.requests)

    manifest = json.loads((s.run_dir / "manifest.json").read_text())
    import hashlib

    assert manifest["identity"]["review_prompt_sha256"] == hashlib.sha256(custom.read_bytes()).hexdigest()
    assert "review_prompt_sha256" not in default.identity

    # The same text at another path is the same experiment; other text is another one.
    copy = tmp_path / "elsewhere.txt"
    copy.write_text(custom.read_text(encoding="utf-8"), encoding="utf-8")
    assert prepare_run(cfg(fake_server, data, out, review_prompt=str(copy))).run_id == s.run_id
    copy.write_text("Something else entirely.", encoding="utf-8")
    assert prepare_run(cfg(fake_server, data, out, review_prompt=str(copy))).run_id not in (s.run_id, default.run_id)


@pytest.mark.parametrize(
    ("kw", "fragment"),
    [
        ({"task": "qa", "review_prompt": "REVIEW"}, "--review-prompt only applies to --task self-correct"),
        ({"review_prompt": "MISSING"}, "cannot read it"),
        ({"review_prompt": "EMPTY"}, "the file is empty"),
        ({"task": "self-correct:self-correct"}, "cannot wrap itself"),
        ({"task": "self-correct:nope"}, "base task could not be loaded"),
    ],
)
def test_bad_self_correct_settings_are_refused_before_any_request(fake_server, tmp_path, kw, fragment) -> None:
    (tmp_path / "review.txt").write_text("Review it.", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("  \n", encoding="utf-8")
    paths = {"REVIEW": tmp_path / "review.txt", "MISSING": tmp_path / "missing.txt", "EMPTY": tmp_path / "empty.txt"}
    if "review_prompt" in kw:
        kw = {**kw, "review_prompt": str(paths[kw["review_prompt"]])}
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    with pytest.raises(UsageError, match=re.escape(fragment)):
        run_experiment(cfg(fake_server, data, tmp_path / "out", **kw))
    assert fake_server.request_count == 0 and not (tmp_path / "out").exists()


def test_cli_review_prompt_flag(fake_server, tmp_path) -> None:
    fake_server.responder = planned_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    review = tmp_path / "review.txt"
    review.write_text("Are you sure? Give the final answer as '#### <number>'.", encoding="utf-8")
    out = tmp_path / "out"
    args = ["run", "--dataset", str(data), "--model", "openai/test-model", "--task", "self-correct",
            "--output-dir", str(out), "--quiet", "--json"]
    plain = run_cli(args, cli_env(fake_server))
    assert plain.returncode == 0, plain.stderr
    custom = run_cli([*args, "--review-prompt", str(review)], cli_env(fake_server))
    assert custom.returncode == 0, custom.stderr
    plain_id, custom_id = json.loads(plain.stdout)["run_id"], json.loads(custom.stdout)["run_id"]
    assert plain_id != custom_id and plain_id.startswith("qa_openai-test-model_self-correct_")
    reviews = [r.body["messages"][-1]["content"] for r in fake_server.requests if turn_of(r.body) == 2]
    assert reviews.count(REVIEW_PROMPT) == 4
    assert reviews.count("Are you sure? Give the final answer as '#### <number>'.") == 4
    assert RunConfig(dataset="x", review_prompt="r.txt").to_cli_args()[-2:] == ["--review-prompt", "r.txt"]


def test_anthropic_wire_format_keeps_the_conversation(fake_server, tmp_path) -> None:
    fake_server.responder = planned_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    config = RunConfig(dataset=str(data), model="anthropic/claude-test", output_dir=tmp_path / "out",
                       base_url=fake_server.anthropic_base_url, api_key="sk-ant", quiet=True, task="self-correct")
    s = run_experiment(config)
    assert s.exit_code == 0 and s.ok == 2
    second = requests_for(fake_server, 1)[1].body
    assert second["system"] == SYSTEM_PROMPT or second["system"][0]["text"] == SYSTEM_PROMPT
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["user", "assistant", "user"]
    assert message_texts(second)[-1] == ("user", REVIEW_PROMPT)


def test_self_correct_on_humaneval(fake_server, tmp_path) -> None:
    """Base humaneval: both answers are executed; wrong code then right code is incorrect→correct."""
    with gzip.open(BUILTIN_DATASETS["humaneval"].path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][:2]

    def reply(body: dict[str, Any]) -> str:
        row = next(r for r in rows if r["prompt"].strip("\n") in body["messages"][0]["content"])
        body_code = row["canonical_solution"] if turn_of(body) == 2 else "    return None\n"
        return f"```python\n{row['prompt']}{body_code}```"

    fake_server.responder = reply
    s = run_experiment(cfg(fake_server, "humaneval", tmp_path / "out", limit=2, allow_code_execution=True))
    assert s.exit_code == 0 and s.ok == 2 and fake_server.request_count == 4
    for rec in all_records(s.run_dir):
        assert rec["extra"]["transition"] == "incorrect→correct" and rec["extra"]["base_task"] == "humaneval"
        t1, t2 = rec["extra"]["turns"]
        assert t1["execution"]["exit_code"] != 0 and t2["execution"]["exit_code"] == 0
        assert rec["correct"] is True


def test_run_directly_with_fixed_answers() -> None:
    """The task alone, with a generate function that records what it was sent."""
    task = load_task("self-correct:qa")
    sent: list[list[dict[str, str]]] = []

    async def generate(messages: list[dict[str, str]]) -> str:
        sent.append([dict(m) for m in messages])
        return "#### 5" if len(sent) == 1 else "#### 7"

    sample = Sample(id="x", row=1, fields={"question": "2 + 5?", "answer": "#### 7"})
    out = asyncio.run(task.run(sample, generate, random.Random(0)))
    assert len(sent) == 2 and sent[1][:2] == sent[0]
    assert sent[1][2:] == [{"role": "assistant", "content": "#### 5"}, {"role": "user", "content": REVIEW_PROMPT}]
    assert out.responses == ["#### 5", "#### 7"] and out.messages == sent[1]
    assert out.extra["transition"] == "incorrect→correct" and out.score.correct is True
    assert isinstance(SelfCorrectTask(), SelfCorrectTask) and SelfCorrectTask().base.name == "qa"


def test_stats_bill_a_self_correction_run_as_the_budget_does_also_after_replayed_turns(fake_server, tmp_path) -> None:
    """get_stats' cost and tokens are the run's bill: every paid call once (the calls file), not
    the sum of the records' sample totals, which count a turn again when a retried sample replays it."""
    from evalledger.ledger import scan_ledger
    from evalledger.readers import get_stats
    from evalledger.study import spent_usd

    def bill(run_dir: Path) -> tuple[float, int, int]:
        calls = [json.loads(x) for x in (run_dir / "calls.jsonl").read_text().splitlines()]
        return (sum(c["cost_usd"] for c in calls), sum(c["usage"]["input_tokens"] for c in calls),
                sum(c["usage"]["output_tokens"] for c in calls))

    def check(summary) -> None:
        stats = get_stats(summary.run_dir)
        cost, tokens_in, tokens_out = bill(summary.run_dir)
        assert stats["cost_usd"] == pytest.approx(cost, rel=1e-12)
        assert stats["cost_usd"] == pytest.approx(summary.stats["cost_usd"], rel=1e-12)  # the runner's bill
        assert stats["cost_usd"] == pytest.approx(spent_usd(summary.run_dir), rel=1e-12)  # the study's
        assert stats["cost_usd"] == pytest.approx(scan_ledger(summary.run_dir).billed_cost, rel=1e-12)  # --max-cost's
        assert (stats["input_tokens"], stats["output_tokens"]) == (tokens_in, tokens_out)

    fake_server.responder = planned_reply
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    config = cfg(fake_server, data, tmp_path / "out", price_input=3.0, price_output=15.0)
    # Two review turns are refused: those samples' records are errors that carry turn 1's usage.
    fake_server.fail_when("Review your previous answer", status=400, times=2)
    s1 = run_experiment(config)
    assert s1.ok == 6 and s1.errors == 2
    assert fake_server.request_count == 16  # 8 first turns, 6 + 2 refused reviews
    check(s1)

    # Resume: the two errors are retried; their first turn is replayed from the calls file, not paid again.
    before = fake_server.request_count
    s2 = run_experiment(config)
    assert s2.ok == 2 and fake_server.request_count - before == 2
    recs = all_records(s2.run_dir)
    retried = [r for r in recs if r["status"] == "ok" and r.get("turn_usage", [{}])[0].get("replayed")]
    assert len(retried) == 2
    # What the old sum over records got wrong: those turns would be counted twice.
    assert sum(r["cost_usd"] for r in recs) > bill(s2.run_dir)[0] * (1 + 1e-9)
    check(s2)
