"""Few-shot prompts (``--fewshot N``, ``--fewshot-from FILE``): the exemplar sources, the per-sample
selection, the run ID, the prompt on the wire and every refusal, through the real loader, tasks,
prepare_run, run_experiment and CLI against the loopback fake server."""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from helpers import all_records, cli_env, run_cli, run_config, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.datasets import BUILTIN_DATASETS, ExemplarSelector, LazySamples, load_dataset
from evalledger.errors import DatasetError, UsageError
from evalledger.run import prepare_run, run_experiment
from evalledger.samples import Sample
from evalledger.tasks.qa import SYSTEM_PROMPT

# Run IDs of zero-shot runs, computed before --fewshot existed: they must never change.
ZERO_SHOT_RUN_IDS = {
    ("gsm8k", None): "gsm8k_openai-gpt-4o-mini_qa_2081c178",
    ("mmlu-elementary-math", None): "mmlu-elementary-math_openai-gpt-4o-mini_mcq_1bc8e3ba",
    ("gsm8k", "self-correct"): "gsm8k_openai-gpt-4o-mini_self-correct_947898d5",
}


def prepared(dataset: str | Path, **kw):
    """prepare_run for a config that sends nothing (no output directory is checked or made)."""
    return prepare_run(RunConfig(dataset=str(dataset), model="openai/gpt-4o-mini", **kw), check_output_dir=False)


def exemplar_ids(samples) -> dict[str, list[str]]:
    return {s.id: [e.id for e in s.fewshot] for s in samples}


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --- the shipped sources -----------------------------------------------------------------------


def test_gsm8k_with_all_eight_is_the_standard_chain_of_thought_prompt() -> None:
    p = prepared("gsm8k", fewshot=8, limit=3)
    sample = p.selection[0]
    messages = p.task.build_messages(sample)
    assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert messages[-1] == {"role": "user", "content": sample["question"]}
    pairs = messages[1:-1]
    assert [m["role"] for m in pairs] == ["user", "assistant"] * 8
    assert pairs[0]["content"].startswith("There are 15 trees in the grove.")
    assert pairs[1]["content"].endswith("So there must have been 21 - 15 = 6. The answer is 6.")
    assert pairs[-2]["content"] == ("Olivia has $23. She bought five bagels for $3 each. "
                                    "How much money does she have left?")
    assert pairs[-1]["content"].endswith("23 - 15 is 8. The answer is 8.")
    # The same 8, in the file's order, for every sample.
    order = [f"gsm8k-cot-{i:04d}" for i in range(8)]
    assert all(ids == order for ids in exemplar_ids(p.selection).values())


def test_mmlu_draws_from_its_dev_split_in_the_task_answer_format() -> None:
    p = prepared("mmlu-elementary-math", fewshot=5, limit=2)
    messages = p.task.build_messages(p.selection[0])
    assert len(messages) == 11 and [m["role"] for m in messages] == ["user", "assistant"] * 5 + ["user"]
    dev = load_dataset(BUILTIN_DATASETS["mmlu-elementary-math"].fewshot_path)
    assert [m["content"] for m in messages[1:10:2]] == [f"Answer: {row['answer']}" for row in dev.samples]
    assert messages[0]["content"].startswith(dev.samples[0]["question"])
    assert messages[0]["content"].endswith("End your response with a line 'Answer: X' where X is the letter.")
    assert p.manifest()["fewshot"] == {"n": 5, "path": str(BUILTIN_DATASETS["mmlu-elementary-math"].fewshot_path),
                                       "sha256": p.identity["fewshot"]["source_sha256"], "rows": 5}


# --- selection ---------------------------------------------------------------------------------


def test_selection_is_reproducible_in_any_order_shard_and_resume(tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 40)
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 12, start=500)
    whole = exemplar_ids(prepared(data, fewshot=4, fewshot_from=str(pool)).selection)
    assert len(whole) == 40 and all(len(ids) == 4 for ids in whole.values())
    # Another prepare (a resume), and each shard of 3, give every sample the same exemplars.
    assert exemplar_ids(prepared(data, fewshot=4, fewshot_from=str(pool)).selection) == whole
    sharded: dict[str, list[str]] = {}
    for k in (1, 2, 3):
        sharded.update(exemplar_ids(prepared(data, fewshot=4, fewshot_from=str(pool), shard=(k, 3)).selection))
    assert sharded == whole
    # The order samples are looked at in changes nothing: a fresh selector, samples reversed.
    p = prepared(data, fewshot=4, fewshot_from=str(pool))
    fresh = ExemplarSelector(p.fewshot.source, 4, 0, key=p.task.exemplar_key, layout=p.task.exemplar_version)
    bare = [Sample(s.id, s.row, s.fields) for s in reversed(p.selection)]
    assert {s.id: [e.id for e in fresh.choose(s)] for s in bare} == whole
    # Exemplars keep the source's order, samples do not all get the same ones, and the seed matters.
    assert all(ids == sorted(ids) for ids in whole.values())
    assert len({tuple(ids) for ids in whole.values()}) > 10
    assert exemplar_ids(prepared(data, fewshot=4, fewshot_from=str(pool), seed=1).selection) != whole


def test_every_exemplar_is_drawn_about_equally_often(tmp_path: Path) -> None:
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 8)
    p = prepared(pool, fewshot=3, fewshot_from=str(pool))
    selector = p.fewshot
    counts: Counter[str] = Counter()
    draws = 4000
    for i in range(draws):
        counts.update(e.id for e in selector.choose(Sample(f"other-{i}", 1, {"question": f"q{i}", "answer": "1"})))
    # 3 of 8 each time: 1500 expected per exemplar; a biased draw (always the first rows, a broken
    # skip) is far outside +-10 %.
    assert set(counts) == {f"s{i:05d}" for i in range(8)}
    assert all(1350 <= c <= 1650 for c in counts.values()), counts


def test_never_the_sample_itself_when_the_source_is_the_dataset(tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    p = prepared(data, fewshot=5, fewshot_from=str(data))
    everyone = {f"s{i:05d}" for i in range(6)}
    for sid, ids in exemplar_ids(p.selection).items():
        assert sid not in ids and set(ids) == everyone - {sid}
    # The same file under another name is still the sample itself: ids and questions match.
    copy = tmp_path / "copy.jsonl"
    copy.write_bytes(data.read_bytes())
    assert exemplar_ids(prepared(data, fewshot=5, fewshot_from=str(copy)).selection) == exemplar_ids(p.selection)


def test_an_exemplar_asking_the_samples_question_is_left_out(tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 3, start=100)
    with open(pool, "a", encoding="utf-8") as f:  # sample s00002's question, other id and spacing
        f.write(json.dumps({"id": "copy-of-2", "question": "Question 2:  what is 2 + 0?\n[[ANSWER:2]] ",
                            "answer": "#### 2"}) + "\n")
    chosen = exemplar_ids(prepared(data, fewshot=3, fewshot_from=str(pool)).selection)
    assert chosen["s00002"] == ["s00100", "s00101", "s00102"]
    assert any("copy-of-2" in ids for sid, ids in chosen.items() if sid != "s00002")
    # With 4 to show, s00002 has only 3 left: refused before anything is sent, naming it.
    with pytest.raises(UsageError) as info:
        prepared(data, fewshot=4, fewshot_from=str(pool))
    message = info.value.message
    assert message.startswith("--fewshot 4: sample s00002") and "only 3 of the 4 exemplars" in message
    assert "choose --fewshot 3 or fewer" in message


def test_rows_read_back_on_demand_carry_the_same_exemplars(tmp_path: Path) -> None:
    """A dataset of over 1 MiB is read back lazily, on a resume from its index too; its own rows as
    the source are read once, and every sample still gets the exemplars the selection rule gives."""
    data = write_qa_dataset(tmp_path / "big.jsonl", 12000)
    assert data.stat().st_size >= 1 << 20
    out = tmp_path / "out"
    first = prepare_run(RunConfig(dataset=str(data), model="openai/m", output_dir=out, fewshot=3,
                                  fewshot_from=str(data)))
    assert isinstance(first.samples, LazySamples) and first.new_index is not None
    first.run_dir.mkdir(parents=True)
    first.save_dataset_index()
    again = prepare_run(RunConfig(dataset=str(data), model="openai/m", output_dir=out, fewshot=3,
                                  fewshot_from=str(data), shard=(2, 5)))
    assert again.new_index is None and isinstance(again.selection, LazySamples)  # from the index: no validation
    picked = exemplar_ids(again.selection[:50])
    assert picked == {sid: [e.id for e in first.fewshot.choose(Sample(sid, 0, {"question": q}))]
                      for sid, q in ((s.id, s["question"]) for s in again.selection[:50])}
    assert all(sid not in ids and len(ids) == 3 for sid, ids in picked.items())
    assert all(len(s.fewshot) == 3 for s in first.samples[:20])  # read back after the first validation too


# --- the run ID --------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "task"), list(ZERO_SHOT_RUN_IDS))
def test_zero_shot_keeps_its_run_id(dataset: str, task: str | None) -> None:
    p = prepared(dataset, task=task)
    assert p.run_id == ZERO_SHOT_RUN_IDS[(dataset, task)]
    assert "fewshot" not in p.identity and "fewshot" not in p.index_key and "fewshot" not in p.manifest()
    assert p.fewshot is None and all(s.fewshot == () for s in p.selection[:5])


def test_n_the_source_content_and_the_rule_make_the_run_id(tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 6, start=100)
    ids = {n: prepared(data, fewshot=n, fewshot_from=str(pool) if n else None).run_id for n in (0, 2, 3)}
    assert len(set(ids.values())) == 3
    two = prepared(data, fewshot=2, fewshot_from=str(pool))
    assert two.identity["fewshot"] == {"n": 2, "source_sha256": two.fewshot.source.sha256,
                                       "rule": "sha256-partial-shuffle-v1", "layout": "qa-fewshot-v1"}
    moved = tmp_path / "elsewhere" / "other-name.jsonl"
    moved.parent.mkdir()
    moved.write_bytes(pool.read_bytes())
    assert prepared(data, fewshot=2, fewshot_from=str(moved)).run_id == ids[2]  # content, not path
    with open(moved, "a", encoding="utf-8") as f:
        f.write(json.dumps({"id": "extra", "question": "Question x? [[ANSWER:7]]", "answer": "#### 7"}) + "\n")
    assert prepared(data, fewshot=2, fewshot_from=str(moved)).run_id != ids[2]


# --- the prompt on the wire --------------------------------------------------------------------

_MARK = re.compile(r"\[\[ANSWER:(\d+)\]\]")


def test_the_server_receives_the_exemplar_pairs_before_the_question(fake_server, tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 5, start=100)
    config = run_config(fake_server, data, tmp_path / "out", fewshot=3, fewshot_from=str(pool))
    s = run_experiment(config)
    assert s.exit_code == 0 and s.ok == 6 and fake_server.request_count == 6
    expected = exemplar_ids(prepare_run(config).selection)
    for request in fake_server.requests:
        messages = request.body["messages"]
        assert messages[0] == {"role": "system", "content": SYSTEM_PROMPT}
        i = int(_MARK.search(messages[-1]["content"]).group(1))
        assert messages[-1] == {"role": "user", "content": f"Question {i}: what is {i} + 0? [[ANSWER:{i}]]"}
        pairs = messages[1:-1]
        assert [m["role"] for m in pairs] == ["user", "assistant"] * 3
        shown = [int(_MARK.search(m["content"]).group(1)) for m in pairs[::2]]
        assert [f"s{k:05d}" for k in shown] == expected[f"s{i:05d}"]
        for k, (question, answer) in zip(shown, zip(pairs[::2], pairs[1::2])):
            assert question["content"] == f"Question {k}: what is {k} + 0? [[ANSWER:{k}]]"
            assert answer["content"] == f"{k} + 0 = {k}\n#### {k}"
    for record in all_records(s.run_dir):
        assert record["correct"] is True and len(record["prompt"]) == 8
        assert record["fewshot_ids"] == expected[record["sample_id"]]  # the exemplars it was shown
    again = run_experiment(config)  # a resume shows the same prompts, so it pays for nothing
    assert again.requests == 0 and fake_server.request_count == 6


def test_self_correct_shows_the_exemplars_in_its_first_turn(fake_server, tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 4, start=100)
    s = run_experiment(run_config(fake_server, data, tmp_path / "out", task="self-correct", fewshot=2,
                                  fewshot_from=str(pool)))
    assert s.exit_code == 0 and s.ok == 3 and fake_server.request_count == 6
    by_length = Counter(len(r.body["messages"]) for r in fake_server.requests)
    assert by_length == {6: 3, 8: 3}  # system + 2 pairs + question; then the reply and the review
    for request in fake_server.requests:
        messages = request.body["messages"]
        assert [m["role"] for m in messages[1:5]] == ["user", "assistant", "user", "assistant"]
        assert all(_MARK.search(m["content"]).group(1).startswith("10") for m in messages[1:5:2])


# --- refusals ----------------------------------------------------------------------------------


def test_a_dataset_without_a_shipped_source_needs_fewshot_from(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^--fewshot 1: the built-in dataset 'humaneval' ships no worked "
                                         r"examples.*--fewshot-from FILE"):
        prepare_run(RunConfig(dataset="humaneval", fewshot=1, allow_code_execution=True), check_output_dir=False)
    data = write_qa_dataset(tmp_path / "mine.jsonl", 3)
    with pytest.raises(UsageError, match=r"^--fewshot 2: dataset .*mine\.jsonl ships no worked examples"):
        prepared(data, fewshot=2)


def test_a_data_directory_without_the_shipped_exemplars(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "gsm8k_test.jsonl").write_bytes(BUILTIN_DATASETS["gsm8k"].path.read_bytes())
    monkeypatch.setenv("EVALLEDGER_DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetError) as info:
        prepared("gsm8k", fewshot=2)
    assert info.value.message == (
        f"--fewshot 2, gsm8k_cot_exemplars.jsonl (shipped with gsm8k): file not found: "
        f"{tmp_path.resolve() / 'gsm8k_cot_exemplars.jsonl'}; give another source with --fewshot-from FILE")
    assert prepared("gsm8k").run_id == ZERO_SHOT_RUN_IDS[("gsm8k", None)]  # zero-shot needs no exemplars


def test_humaneval_shows_canonical_solutions_from_a_given_source(tmp_path: Path) -> None:
    rows = [json.loads(line) for line in
            gzip.open(BUILTIN_DATASETS["humaneval"].path, "rt", encoding="utf-8")][:3]
    source = write_rows(tmp_path / "he.jsonl", rows)
    p = prepare_run(RunConfig(dataset="humaneval", fewshot=2, fewshot_from=str(source), allow_code_execution=True,
                              limit=3), check_output_dir=False, check_code_execution=False)
    chosen = exemplar_ids(p.selection)
    assert chosen == {r["task_id"]: [o["task_id"] for o in rows if o is not r] for r in rows}  # never itself
    messages = p.task.build_messages(p.selection[0])
    assert messages[0]["content"] == p.task.question_text(p.fewshot.source.exemplars[1])
    assert messages[1]["content"] == f"```python\n{rows[1]['prompt']}{rows[1]['canonical_solution'].rstrip()}\n```"
    del rows[2]["canonical_solution"]
    write_rows(source, rows)
    with pytest.raises(DatasetError, match=r"row 3 \(id HumanEval/2\): .*'canonical_solution'"):
        prepare_run(RunConfig(dataset="humaneval", fewshot=1, fewshot_from=str(source), allow_code_execution=True),
                    check_output_dir=False, check_code_execution=False)


def test_n_larger_than_the_source(tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 5, start=100)
    with pytest.raises(UsageError) as info:
        prepared(data, fewshot=6, fewshot_from=str(pool))
    assert info.value.message == (f"--fewshot 6: only 5 exemplar(s) in --fewshot-from {pool}; "
                                  "choose --fewshot 5 or fewer")
    shipped = r"^--fewshot 9: only 8 exemplar\(s\) in gsm8k_cot_exemplars\.jsonl \(shipped with gsm8k\)"
    with pytest.raises(UsageError, match=shipped):
        prepared("gsm8k", fewshot=9)
    # The dataset as its own source: every sample is one of the 4, so at most 3.
    with pytest.raises(UsageError, match=r"^--fewshot 4: sample s0000\d .*only 3 of the 4 exemplars.*itself"):
        prepared(data, fewshot=4, fewshot_from=str(data))


@pytest.mark.parametrize(("content", "fragments"), [
    (None, ["--fewshot-from", "dataset not found", "missing.jsonl"]),
    ('{"id": "a", "question": "q?", "answer": "#### 1"}\n{not json\n', ["--fewshot-from", "line 2"]),
    ('{"id": "a", "question": "q?", "answer": "#### 1"}\n{"id": "b", "question": "r?"}\n',
     ["--fewshot-from", "missing required field", "'answer'", "line 2"]),
    ('{"id": "a", "question": "q?", "answer": "no number here"}\n', ["--fewshot-from", "row 1 (id a)", "numeric"]),
    ('{"id": "a", "question": "q?", "answer": "#### 3", "target": "So it is 4. The answer is 4."}\n',
     ["--fewshot-from", "row 1 (id a)", "does not score as correct", "The answer is 4."]),
    ("", ["--fewshot-from", "empty"]),
])
def test_a_bad_fewshot_from_file_or_row_is_named(tmp_path: Path, content: str | None, fragments: list[str]) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    source = tmp_path / "missing.jsonl" if content is None else tmp_path / "ex.jsonl"
    if content is not None:
        source.write_text(content, encoding="utf-8")
    with pytest.raises(DatasetError) as info:
        prepared(data, fewshot=1, fewshot_from=str(source))
    assert info.value.message.startswith(f"--fewshot-from {source}: ")
    for fragment in fragments:
        assert fragment in info.value.message, info.value.message
    if content:
        assert str(source) in info.value.message.partition(": ")[2]  # the loader's own message names the file too


def test_a_bad_mcq_exemplar_is_refused(tmp_path: Path) -> None:
    source = write_rows(tmp_path / "dev.jsonl", [
        {"id": "d1", "question": "1 + 1?", "choices": ["1", "2"], "answer": "B"},
        {"id": "d2", "question": "2 + 2?", "choices": ["4", "5"], "answer": "E"},
    ])
    with pytest.raises(DatasetError, match=r"row 2 \(id d2\): field 'answer' = 'E' does not identify"):
        prepared("mmlu-elementary-math", fewshot=1, fewshot_from=str(source))


def test_a_task_that_cannot_show_exemplars_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "plain_task.py").write_text(
        "from evalledger.tasks.base import Score, Task\n"
        "class Plain(Task):\n"
        "    name = 'plain'\n"
        "    def build_messages(self, sample):\n"
        "        return [{'role': 'user', 'content': sample['question']}]\n"
        "    def score(self, response, sample):\n"
        "        return Score(prediction=response, target=None, score=True, correct=True)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    with pytest.raises(UsageError, match=r"^--fewshot 1: task 'plain_task:Plain' cannot show worked examples"):
        prepared(data, task="plain_task:Plain", fewshot=1, fewshot_from=str(data))


# --- the command line ----------------------------------------------------------------------------


def test_cli_flags_give_the_same_run_and_clear_errors(fake_server, tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    pool = write_qa_dataset(tmp_path / "pool.jsonl", 3, start=100)
    env = cli_env(fake_server)
    ok = run_cli(["validate", "--dataset", str(data), "--model", "openai/test-model", "--fewshot", "2",
                  "--fewshot-from", str(pool)], env, cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    run_id = prepare_run(RunConfig(dataset=str(data), model="openai/test-model", fewshot=2, fewshot_from=str(pool)),
                         check_output_dir=False).run_id
    assert ok.stdout.strip().endswith(f"run ID with these flags: {run_id}")
    too_many = run_cli(["validate", "--dataset", str(data), "--fewshot", "4", "--fewshot-from", str(pool)], env,
                       cwd=tmp_path)
    assert too_many.returncode == 2
    assert too_many.stderr.strip() == (f"error: --fewshot 4: only 3 exemplar(s) in --fewshot-from {pool}; "
                                       "choose --fewshot 3 or fewer")
    none = run_cli(["run", "--dataset", "humaneval", "--fewshot", "2", "--allow-code-execution",
                    "--model", "openai/test-model"], env, cwd=tmp_path)
    assert none.returncode == 2
    assert "--fewshot 2: the built-in dataset 'humaneval' ships no worked examples" in none.stderr
    assert fake_server.request_count == 0 and not (tmp_path / "outputs").exists()
