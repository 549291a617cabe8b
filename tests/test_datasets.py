"""Tests for evalledger.datasets: real files in tmp_path, real built-in data, no mocks."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import shutil
from pathlib import Path
from typing import Any

import pytest

from evalledger.datasets import (
    BUILTIN_DATASETS,
    Dataset,
    ResolvedDataset,
    load_dataset,
    parse_shard,
    resolve_dataset,
    shard_of,
)
from evalledger.datasets.files import data_dir, dataset_stem
from evalledger.datasets.ids import content_hash_id
from evalledger.datasets.sharding import filter_shard
from evalledger.errors import DatasetError, UsageError
from evalledger.samples import Sample

REPO_DATA = Path(__file__).resolve().parents[1] / "src" / "evalledger" / "datasets" / "data"

# From data/SOURCES.md.
KNOWN_SHA256 = {
    "gsm8k": "3730d312f6e3440559ace48831e51066acaca737f6eabec99bccb9e4b3c39d14",
    "mmlu-elementary-math": "132b4e7fdf7300f6f2b18233c5418fa4436ac1f91eb197ef576c84bbcc0b3668",
    "humaneval": "b796127e635a67f93fb35c04f4cb03cf06f38c8072ee7cee8833d7bee06979ef",
}


# ------------------------------------------------------------------------------------------
# helpers


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def write_csv(path: Path, rows: list[dict[str, Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_parquet(path: Path, rows: list[dict[str, Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def independent_hash_id(fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def independent_shard(sample_id: str, n: int) -> int:
    return int(hashlib.sha256(sample_id.encode()).hexdigest()[:16], 16) % n + 1


def as_pairs(ds: Dataset) -> list[tuple[str, dict[str, Any]]]:
    return [(s.id, s.fields) for s in ds.samples]


def error_of(source: Any, **kwargs: Any) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(source, **kwargs)
    return str(info.value)


TEXT_ROWS = [
    {"question": "What is 2 + 2?", "answer": "4"},
    {"question": "Café, \"quoted\", with a comma", "answer": "yes"},
    {"question": "two\nlines", "answer": "12"},
    {"question": "Ünïcödé ✓", "answer": "007"},
]


# ------------------------------------------------------------------------------------------
# built-in datasets


def test_gsm8k_loads_with_unique_stable_content_hash_ids() -> None:
    first = load_dataset("gsm8k", required_fields=("question", "answer"))
    second = load_dataset("gsm8k")
    assert first.total_rows == 1319
    assert len(first.samples) == 1319
    assert first.id_source == "content-hash"
    ids = [s.id for s in first.samples]
    assert len(set(ids)) == 1319
    assert ids == [s.id for s in second.samples]
    assert all(len(i) == 16 and int(i, 16) >= 0 for i in ids)
    # The id is the canonical-JSON hash of the first line, computed here independently.
    first_line = (REPO_DATA / "gsm8k_test.jsonl").read_text("utf-8").splitlines()[0]
    assert ids[0] == independent_hash_id(json.loads(first_line))
    assert first.samples[0].row == 1
    assert first.samples[0]["answer"].endswith("#### 18")
    assert first.name == "gsm8k"
    assert first.sha256 == KNOWN_SHA256["gsm8k"]


def test_mmlu_loads_with_id_column() -> None:
    ds = load_dataset("mmlu-elementary-math", required_fields=("question", "choices", "answer"))
    assert ds.total_rows == 378
    assert ds.id_source == "column:id"
    assert ds.samples[0].id == "mmlu-elementary_mathematics-test-0000"
    assert ds.samples[0]["choices"] == ["p = 4", "p = 8", "p = 12", "p = 24"]
    again = load_dataset("mmlu-elementary-math")
    assert [s.id for s in ds.samples] == [s.id for s in again.samples]
    assert ds.sha256 == KNOWN_SHA256["mmlu-elementary-math"]


def test_humaneval_loads_from_gzip_with_task_id() -> None:
    ds = load_dataset("humaneval")
    assert ds.total_rows == 164
    assert ds.id_source == "column:task_id"
    assert [s.id for s in ds.samples[:2]] == ["HumanEval/0", "HumanEval/1"]
    assert ds.samples[-1].id == "HumanEval/163"
    assert ds.sha256 == KNOWN_SHA256["humaneval"]


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_builtin_resolution(name: str) -> None:
    resolved = resolve_dataset(name)
    builtin = BUILTIN_DATASETS[name]
    assert resolved.name == name
    assert resolved.path.is_absolute()
    assert resolved.path == (REPO_DATA / builtin.filename).resolve()
    assert resolved.sha256 == KNOWN_SHA256[name]
    assert resolved.default_task == builtin.default_task
    assert resolved.default_id_column == builtin.id_column
    ds = load_dataset(resolved)
    json.dumps([s.fields for s in ds.samples])  # fields are plain JSON values


def test_builtin_default_tasks() -> None:
    assert {n: b.default_task for n, b in BUILTIN_DATASETS.items()} == {
        "gsm8k": "qa",
        "mmlu-elementary-math": "mcq",
        "humaneval": "humaneval",
    }
    assert BUILTIN_DATASETS["humaneval"].id_column == "task_id"


# From data/SOURCES.md: the shipped few-shot sources.
KNOWN_FEWSHOT = {
    "gsm8k": ("gsm8k_cot_exemplars.jsonl", "97e874ed9b68b259084ce2d9acce97c05992b7b7b996d0902e1f3c095f4610a7", 8),
    "mmlu-elementary-math": ("mmlu_elementary_mathematics_dev.jsonl",
                             "abc383e12913c0dcda0a5adc57e61c383626db821396ef03d069f1279460ca45", 5),
}


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_shipped_fewshot_sources(name: str) -> None:
    builtin = BUILTIN_DATASETS[name]
    if name not in KNOWN_FEWSHOT:
        assert builtin.fewshot_filename is None and resolve_dataset(name).fewshot_path is None
        return
    filename, sha256, rows = KNOWN_FEWSHOT[name]
    assert builtin.fewshot_path == REPO_DATA.resolve() / filename == resolve_dataset(name).fewshot_path
    raw = builtin.fewshot_path.read_bytes()
    assert hashlib.sha256(raw).hexdigest() == sha256
    sources = (REPO_DATA / "SOURCES.md").read_text("utf-8")
    assert f"`{sha256}`" in sources and f"| {filename} | {rows} | {len(raw)} |" in sources
    ds = load_dataset(builtin.fewshot_path, required_fields=("question", "answer"))
    assert ds.total_rows == rows and ds.id_source == "column:id"
    test_questions = {s["question"].strip() for s in load_dataset(name).samples}
    assert not any(s["question"].strip() in test_questions for s in ds.samples)  # no exemplar is a test row


def test_gsm8k_chain_of_thought_exemplars_end_in_their_answer() -> None:
    ds = load_dataset(BUILTIN_DATASETS["gsm8k"].fewshot_path, required_fields=("question", "target", "answer"))
    assert [s.id for s in ds.samples] == [f"gsm8k-cot-{i:04d}" for i in range(8)]
    assert [s["answer"] for s in ds.samples] == ["6", "5", "39", "8", "9", "29", "33", "8"]
    for s in ds.samples:
        assert s["target"].endswith(f" The answer is {s['answer']}.")
        assert "\n" not in s["target"] and "  " not in s["question"]
    assert ds.samples[0]["question"] == ("There are 15 trees in the grove. Grove workers will plant trees in the grove "
                                         "today. After they are done, there will be 21 trees. How many trees did the "
                                         "grove workers plant today?")


def test_data_dir_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(REPO_DATA / "HumanEval.jsonl.gz", tmp_path / "HumanEval.jsonl.gz")
    monkeypatch.setenv("EVALLEDGER_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    assert resolve_dataset("humaneval").path == tmp_path.resolve() / "HumanEval.jsonl.gz"
    with pytest.raises(DatasetError) as info:
        resolve_dataset("gsm8k")
    message = str(info.value)
    assert str(tmp_path.resolve() / "gsm8k_test.jsonl") in message
    assert "EVALLEDGER_DATA_DIR" in message


# ------------------------------------------------------------------------------------------
# formats


def test_all_formats_give_the_same_samples(tmp_path: Path) -> None:
    import pyarrow as pa  # noqa: F401  (parquet needs it)

    jsonl = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
    json_array = tmp_path / "d.json"
    json_array.write_text(json.dumps(TEXT_ROWS, indent=2), "utf-8")
    json_lines = tmp_path / "lines.json"
    json_lines.write_bytes(jsonl.read_bytes())
    csv_path = write_csv(tmp_path / "d.csv", TEXT_ROWS)
    parquet = write_parquet(tmp_path / "d.parquet", TEXT_ROWS)
    jsonl_gz = tmp_path / "d.jsonl.gz"
    jsonl_gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    csv_gz = tmp_path / "d.csv.gz"
    csv_gz.write_bytes(gzip.compress(csv_path.read_bytes()))

    expected = [(independent_hash_id(r), r) for r in TEXT_ROWS]
    for path in (jsonl, json_array, json_lines, csv_path, parquet, jsonl_gz, csv_gz):
        ds = load_dataset(str(path))
        assert as_pairs(ds) == expected, path.name
        assert ds.total_rows == 4
        assert ds.name in ("d", "lines")
        assert ds.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_typed_values_are_the_same_in_json_formats(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "x": 1.5, "tags": ["a", "b"], "meta": {"k": 1}, "note": None, "ok": True},
        {"id": 2, "x": 2.0, "tags": [], "meta": {"k": 2}, "note": "n", "ok": False},
    ]
    jsonl = write_jsonl(tmp_path / "t.jsonl", rows)
    array = tmp_path / "t.json"
    array.write_text(json.dumps(rows), "utf-8")
    parquet = write_parquet(tmp_path / "t.parquet", rows)
    results = [as_pairs(load_dataset(str(p))) for p in (jsonl, array, parquet)]
    assert results[0] == [("1", rows[0]), ("2", rows[1])]
    assert results[1] == results[0]
    assert results[2] == results[0]


def test_parquet_from_pandas_gives_plain_python_values(tmp_path: Path) -> None:
    import numpy as np
    import pandas as pd

    frame = pd.DataFrame(
        {
            "question": ["a", "b", "c"],
            "n": np.array([1, 2, 3], dtype="int64"),
            "f": [0.5, float("nan"), 2.0],
            "when": pd.to_datetime(["2024-01-02", "2024-01-03", None]),
            "vec": [np.array([1, 2]), np.array([3]), np.array([], dtype="int64")],
        }
    )
    path = tmp_path / "frame.parquet"
    frame.to_parquet(path)
    ds = load_dataset(str(path), required_fields=("question",))
    fields = [s.fields for s in ds.samples]
    json.dumps(fields)
    assert fields[0]["n"] == 1 and type(fields[0]["n"]) is int
    assert fields[1]["f"] is None
    assert fields[0]["when"] == "2024-01-02T00:00:00"
    assert fields[2]["when"] is None
    assert fields[0]["vec"] == [1, 2] and fields[2]["vec"] == []
    assert ds.row_label == "record"
    assert [s.row for s in ds.samples] == [1, 2, 3]


def test_csv_values_are_kept_as_written(tmp_path: Path) -> None:
    path = tmp_path / "raw.csv"
    path.write_text("id,answer,note\n007,NA,None\n8,1.0,\n", "utf-8")
    ds = load_dataset(str(path))
    assert as_pairs(ds) == [
        ("007", {"id": "007", "answer": "NA", "note": "None"}),
        ("8", {"id": "8", "answer": "1.0", "note": ""}),
    ]


def test_row_numbers_are_physical_lines_or_records(tmp_path: Path) -> None:
    jsonl = tmp_path / "gaps.jsonl"
    jsonl.write_text('{"q": "a"}\n\n   \n{"q": "b"}\n', "utf-8")
    assert [s.row for s in load_dataset(str(jsonl)).samples] == [1, 4]

    # The header is line 1; a quoted newline makes the next record start two lines later.
    csv_path = tmp_path / "multi.csv"
    csv_path.write_text('q,a\n"x\ny",1\n\nz,2\n', "utf-8")
    ds = load_dataset(str(csv_path))
    assert [s.row for s in ds.samples] == [2, 5]
    assert ds.location(ds.samples[1]) == f"{csv_path} line 5"

    array = tmp_path / "arr.json"
    array.write_text(json.dumps([{"q": "a"}, {"q": "b"}], indent=4), "utf-8")
    assert [s.row for s in load_dataset(str(array)).samples] == [1, 2]


# ------------------------------------------------------------------------------------------
# errors: files and formats


def test_missing_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    message = error_of(str(missing))
    assert message.startswith("dataset not found: ")
    assert str(missing) in message
    assert "built-in" not in message  # it is clearly a path


def test_missing_bare_name_lists_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    message = error_of("gsm8")
    assert "dataset not found: gsm8" in message
    for name in BUILTIN_DATASETS:
        assert name in message


def test_unknown_extension_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("hello\n", "utf-8")
    message = error_of(str(path))
    assert "data.txt" in message
    for ext in (".jsonl", ".jsonl.gz", ".json", ".csv", ".parquet"):
        assert ext in message


def test_directory_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    assert "directory" in error_of(str(folder))


def test_invalid_json_line_names_line_and_column(tmp_path: Path) -> None:
    lines = [json.dumps({"question": f"q{i}", "answer": "a"}) for i in range(16)]
    lines.append('{"question": "q" "answer": "a"}')
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(lines) + "\n", "utf-8")
    message = error_of(str(path))
    assert message == f"{path} line 17: invalid JSON: Expecting ',' delimiter (column 18)"


def test_json_line_that_is_not_an_object(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    path.write_text('{"q": "a"}\n\n[1, 2]\n', "utf-8")
    message = error_of(str(path))
    assert f"{path} line 3" in message
    assert "expected a JSON object, got an array" in message


def test_invalid_json_file_and_bad_record(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"q": "a"},\n  {"q": }\n]\n', "utf-8")
    message = error_of(str(broken))
    assert f"{broken} line 3: invalid JSON" in message

    record = tmp_path / "record.json"
    record.write_text('[{"q": "a"}, "just a string"]', "utf-8")
    message = error_of(str(record))
    assert f"{record} record 2: expected a JSON object, got a string" in message

    scalar = tmp_path / "scalar.json"
    scalar.write_text("42", "utf-8")
    assert "expected a JSON array of objects" in error_of(str(scalar))


def test_invalid_utf8_names_line(tmp_path: Path) -> None:
    path = tmp_path / "latin.jsonl"
    path.write_bytes(b'{"q": "a"}\n{"q": "caf\xe9"}\n')
    message = error_of(str(path))
    assert f"{path} line 2: not valid UTF-8" in message

    csv_path = tmp_path / "latin.csv"
    csv_path.write_bytes(b"q,a\nx,1\ncaf\xe9,2\n")
    assert f"{csv_path} line 3: not valid UTF-8" in error_of(str(csv_path))


def test_csv_with_too_many_values(tmp_path: Path) -> None:
    path = tmp_path / "wide.csv"
    path.write_text("q,a\nx,1\ny,2,extra\n", "utf-8")
    message = error_of(str(path))
    assert f"{path} line 3: 3 values, but the header (line 1) has 2 columns" in message


def test_csv_duplicate_header(tmp_path: Path) -> None:
    path = tmp_path / "dup.csv"
    path.write_text("q,a,q\nx,1,y\n", "utf-8")
    assert f"{path} line 1: duplicate column names in the header: q" in error_of(str(path))


def test_corrupt_parquet_and_gzip(tmp_path: Path) -> None:
    parquet = tmp_path / "bad.parquet"
    parquet.write_bytes(b"this is not parquet at all")
    message = error_of(str(parquet))
    assert message.startswith(f"cannot read {parquet} as Parquet: ")

    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(b"not gzip")
    assert error_of(str(gz)).startswith(f"cannot decompress {gz}: ")


@pytest.mark.parametrize(
    ("name", "content"),
    [
        ("empty.jsonl", ""),
        ("blank.jsonl", "\n  \n\n"),
        ("header_only.csv", "question,answer\n"),
        ("empty.csv", ""),
        ("empty_array.json", "[]"),
    ],
)
def test_empty_dataset(tmp_path: Path, name: str, content: str) -> None:
    path = tmp_path / name
    path.write_text(content, "utf-8")
    assert error_of(str(path)) == f"dataset {path} is empty: it has no rows"


def test_file_changed_after_resolving(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
    resolved = resolve_dataset(str(path))
    write_jsonl(path, TEXT_ROWS[:2])
    assert "changed while it was being loaded" in error_of(resolved)


# ------------------------------------------------------------------------------------------
# errors: required fields and ids


def test_missing_required_fields_name_rows(tmp_path: Path) -> None:
    path = tmp_path / "req.jsonl"
    path.write_text(
        "\n".join(
            [
                '{"question": "ok", "answer": "1"}',
                '{"question": "no answer"}',
                '{"question": "null answer", "answer": null}',
                '{"question": "", "answer": "2"}',
                '{"question": "nan", "answer": NaN}',
                '{"question": "ok too", "answer": 0}',
            ]
        )
        + "\n",
        "utf-8",
    )
    message = error_of(str(path), required_fields=("question", "answer"))
    assert message.startswith(f"{path}: 4 rows missing required fields 'answer', 'question'")
    assert "line 2 (answer), line 3 (answer), line 4 (question), line 5 (answer)" in message
    assert "line 1 " not in message and "line 6" not in message


def test_missing_required_fields_lists_first_ten(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": "" if i % 2 else "x"} for i in range(30)]
    path = write_csv(tmp_path / "many.csv", rows)
    message = error_of(str(path), required_fields=["answer"])
    # Odd rows (i = 1, 3, ...) are on lines i + 2: 3, 5, ..., 31; 15 rows in all.
    assert "15 rows missing required field 'answer'" in message
    assert "line 3 (answer)" in message and "line 21 (answer)" in message
    assert "line 23 (answer)" not in message
    assert message.endswith("and 5 more")


def test_required_field_that_is_no_column(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "cols.jsonl", [{"question": "q", "target": "1"}])
    message = error_of(str(path), required_fields=("question", "answer"))
    assert f"{path}: required field 'answer' not found in any row" in message
    assert "columns are: question, target" in message


def test_duplicate_ids_are_named_with_rows(tmp_path: Path) -> None:
    rows = [{"id": i, "q": f"q{n}"} for n, i in enumerate(["a", "b", "a", "c", "b", "a"])]
    path = write_jsonl(tmp_path / "dup.jsonl", rows)
    message = error_of(str(path))
    assert f"{path}: duplicate ids in column 'id'" in message
    assert "'a' (lines 1, 3, 6)" in message
    assert "'b' (lines 2, 5)" in message
    assert "'c'" not in message


def test_many_duplicate_ids_are_capped(tmp_path: Path) -> None:
    rows = [{"id": f"x{i % 12}", "q": str(i)} for i in range(24)]
    path = tmp_path / "dups.json"
    path.write_text(json.dumps(rows), "utf-8")
    message = error_of(str(path))
    assert "'x0' (records 1, 13)" in message
    assert "'x9' (records 10, 22)" in message
    assert "'x10'" not in message
    assert "and 2 more" in message


def test_identical_rows_collide_on_content_hash(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "same.jsonl", [TEXT_ROWS[0], TEXT_ROWS[1], TEXT_ROWS[0]])
    message = error_of(str(path))
    assert "identical content" in message
    assert f"'{independent_hash_id(TEXT_ROWS[0])}' (lines 1, 3)" in message


def test_missing_or_empty_id_names_row(tmp_path: Path) -> None:
    path = tmp_path / "ids.jsonl"
    path.write_text('{"id": "a"}\n{"id": ""}\n{"id": null}\n{"q": "no id"}\n{"id": "e"}\n', "utf-8")
    message = error_of(str(path))
    assert f"{path}: missing or empty id in column 'id' at lines 2, 3, 4" in message

    csv_path = tmp_path / "ids.csv"
    csv_path.write_text("id,q\n1,a\n,b\n", "utf-8")
    assert f"{csv_path}: missing or empty id in column 'id' at line 3" in error_of(str(csv_path))


def test_non_scalar_id_is_refused(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "listid.jsonl", [{"id": "a"}, {"id": [1, 2]}])
    message = error_of(str(path))
    assert f"{path} line 2: id column 'id' holds an array" in message


def test_id_column_not_a_column_lists_columns(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
    message = error_of(str(path), id_column="uid")
    assert f"id column 'uid' not found in {path}" in message
    assert "columns are: question, answer" in message


# ------------------------------------------------------------------------------------------
# limit and id columns


def test_limit_keeps_first_rows_and_counts_all(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(10)]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = load_dataset(str(path), limit=3)
    assert [s.fields for s in ds.samples] == rows[:3]
    assert ds.total_rows == 10
    assert len(load_dataset(str(path), limit=100).samples) == 10


def test_limit_still_validates_the_whole_file(tmp_path: Path) -> None:
    rows = [{"question": f"q{i}", "answer": str(i)} for i in range(10)]
    rows[8]["answer"] = ""
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    message = error_of(str(path), required_fields=("answer",), limit=2)
    assert "line 9 (answer)" in message


@pytest.mark.parametrize("bad", [0, -1])
def test_bad_limit_is_usage_error(tmp_path: Path, bad: int) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", TEXT_ROWS)
    with pytest.raises(UsageError, match="limit must be a positive integer"):
        load_dataset(str(path), limit=bad)


def test_id_column_and_id_conversion(tmp_path: Path) -> None:
    rows = [
        {"uid": 3.0, "n": 10, "id": "ignored-1"},
        {"uid": 7, "n": 11, "id": "ignored-2"},
        {"uid": "x", "n": 12, "id": "ignored-3"},
        {"uid": 2.5, "n": 13, "id": "ignored-4"},
    ]
    path = write_jsonl(tmp_path / "d.jsonl", rows)
    ds = load_dataset(str(path), id_column="uid")
    assert [s.id for s in ds.samples] == ["3", "7", "x", "2.5"]
    assert ds.id_source == "column:uid"
    # Without id_column, a column named "id" is used.
    auto = load_dataset(str(path))
    assert auto.id_source == "column:id"
    assert [s.id for s in auto.samples][:2] == ["ignored-1", "ignored-2"]
    # An explicit id_column beats a built-in's default.
    hum = load_dataset("humaneval", id_column="prompt")
    assert hum.id_source == "column:prompt"
    assert hum.samples[0].id.startswith("from typing import List")


def test_duplicate_ids_in_real_data() -> None:
    # HumanEval's entry_point is not unique: six names occur twice.
    message = error_of("humaneval", id_column="entry_point")
    assert "HumanEval.jsonl.gz: duplicate ids in column 'entry_point'" in message
    assert "'triangle_area' (lines 46, 72)" in message
    assert "'sum_squares' (lines 134, 143)" in message


def test_id_column_with_nulls_in_parquet_gives_integer_ids(tmp_path: Path) -> None:
    path = write_parquet(tmp_path / "p.parquet", [{"k": 1, "q": "a"}, {"k": 2, "q": "b"}])
    assert [s.id for s in load_dataset(str(path), id_column="k").samples] == ["1", "2"]


# ------------------------------------------------------------------------------------------
# content-hash ids


def test_hash_ids_depend_on_content_not_order(tmp_path: Path) -> None:
    forward = load_dataset(str(write_jsonl(tmp_path / "a.jsonl", TEXT_ROWS)))
    backward = load_dataset(str(write_jsonl(tmp_path / "b.jsonl", TEXT_ROWS[::-1])))
    assert {s.id: s.fields for s in forward.samples} == {s.id: s.fields for s in backward.samples}
    assert [s.id for s in forward.samples] == [s.id for s in backward.samples][::-1]

    # Key order inside an object does not matter either.
    shuffled = [dict(reversed(list(r.items()))) for r in TEXT_ROWS]
    keys = load_dataset(str(write_jsonl(tmp_path / "c.jsonl", shuffled)))
    assert [s.id for s in keys.samples] == [s.id for s in forward.samples]


def test_hash_ids_change_when_content_changes(tmp_path: Path) -> None:
    changed = [dict(r) for r in TEXT_ROWS]
    changed[1]["answer"] = "no"
    before = load_dataset(str(write_jsonl(tmp_path / "a.jsonl", TEXT_ROWS)))
    after = load_dataset(str(write_jsonl(tmp_path / "b.jsonl", changed)))
    assert before.samples[1].id != after.samples[1].id
    assert [s.id for i, s in enumerate(before.samples) if i != 1] == [
        s.id for i, s in enumerate(after.samples) if i != 1
    ]
    assert before.sha256 != after.sha256


def test_content_hash_id_formula() -> None:
    row = {"b": [1, "é"], "a": None}
    expected = hashlib.sha256('{"a":null,"b":[1,"é"]}'.encode()).hexdigest()[:16]
    assert content_hash_id(row) == expected


# ------------------------------------------------------------------------------------------
# sharding


def test_shards_are_disjoint_and_cover_everything() -> None:
    samples = load_dataset("gsm8k").samples
    shards = [filter_shard(samples, (k, 4)) for k in range(1, 5)]
    ids = [{s.id for s in shard} for shard in shards]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not ids[i] & ids[j]
    assert set().union(*ids) == {s.id for s in samples}
    assert sum(len(s) for s in shards) == len(samples)
    assert all(len(s) > 200 for s in shards)  # the hash spreads 1319 ids roughly evenly
    # File order is kept within a shard.
    order = {s.id: n for n, s in enumerate(samples)}
    for shard in shards:
        positions = [order[s.id] for s in shard]
        assert positions == sorted(positions)
    assert filter_shard(samples, None) == samples


def test_shard_assignment_is_stable() -> None:
    for sample_id in ("abc", "HumanEval/0", "mmlu-elementary_mathematics-test-0000", ""):
        for n in (1, 4, 7):
            assert shard_of(sample_id, n) == independent_shard(sample_id, n)
    # Pinned values, so a change to the formula cannot go unnoticed.
    assert shard_of("abc", 4) == 3
    assert shard_of("HumanEval/0", 4) == 1
    assert shard_of("HumanEval/0", 7) == 5
    assert shard_of("mmlu-elementary_mathematics-test-0000", 4) == 4


def test_filter_shard_uses_shard_of() -> None:
    samples = [Sample(id=f"s{i}", row=i + 1) for i in range(50)]
    picked = filter_shard(samples, (2, 3))
    assert [s.id for s in picked] == [s.id for s in samples if independent_shard(s.id, 3) == 2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1/4", (1, 4)),
        (" 4/4 ", (4, 4)),
        ("1/1", (1, 1)),
        ("none", None),
        ("None", None),
        ("", None),
    ],
)
def test_parse_shard_valid(text: str, expected: tuple[int, int] | None) -> None:
    assert parse_shard(text) == expected


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("0/4", "--shard 0/4: K must be between 1 and N (got K=0, N=4)"),
        ("5/4", "--shard 5/4: K must be between 1 and N (got K=5, N=4)"),
        ("a/b", "--shard a/b: K and N must be whole numbers"),
        ("3", "--shard 3: expected K/N"),
        ("1/0", "--shard 1/0: N must be at least 1 (got N=0)"),
        ("1/2/3", "--shard 1/2/3: expected K/N"),
    ],
)
def test_parse_shard_errors(text: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_shard(text)
    assert fragment in str(info.value)


def test_parse_shard_auto_reads_slurm() -> None:
    env = {"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert parse_shard("auto", environ=env) == (4, 8)
    with pytest.raises(UsageError, match="--shard auto: not running in a Slurm job array"):
        parse_shard("auto", environ={})
    stepped = dict(env, SLURM_ARRAY_TASK_ID="14")
    with pytest.raises(UsageError, match="contiguous array"):
        parse_shard("auto", environ=stepped)


# ------------------------------------------------------------------------------------------
# names and resolution


@pytest.mark.parametrize(
    ("name", "stem"),
    [
        ("HumanEval.jsonl.gz", "HumanEval"),
        ("gsm8k_test.jsonl", "gsm8k_test"),
        ("my.data.csv", "my.data"),
        ("x.PARQUET", "x"),
        ("records.json", "records"),
        (".jsonl", ".jsonl"),
    ],
)
def test_dataset_stem(name: str, stem: str) -> None:
    assert dataset_stem(Path("/some/dir") / name) == stem


def test_resolve_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_csv(tmp_path / "my.data.csv", TEXT_ROWS)
    monkeypatch.chdir(tmp_path)
    resolved = resolve_dataset("my.data.csv")
    assert resolved == ResolvedDataset(
        name="my.data",
        path=path.resolve(),
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        default_task=None,
        default_id_column=None,
    )
    # A Path is always a path, loaded the same as the string spec.
    assert as_pairs(load_dataset(Path("my.data.csv"))) == as_pairs(load_dataset(resolved))


def test_nan_and_infinity_fields_are_json_safe(tmp_path: Path) -> None:
    path = tmp_path / "nan.jsonl"
    path.write_text('{"q": "a", "x": NaN}\n', "utf-8")
    sample = load_dataset(str(path)).samples[0]
    assert sample.fields == {"q": "a", "x": None}
    assert not any(isinstance(v, float) and math.isnan(v) for v in sample.fields.values())


def test_jsonl_lines_orjson_refuses_still_load_as_json_reads_them(tmp_path):
    """The orjson fast path must not change any value: what it refuses (BOM, NaN, integers beyond
    64 bits) goes through json, as before."""
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(
        b'\xef\xbb\xbf{"id": "a", "x": 1}\n'
        b'{"id": "b", "x": NaN}\n'
        b'{"id": "c", "x": 123456789012345678901234567890}\n'
        b'{"id": "d", "x": [1.5, {"y": "\\u00e9"}]}\n'
    )
    ds = load_dataset(str(path))
    assert [(s.id, s.fields["x"]) for s in ds.samples] == [
        ("a", 1), ("b", None), ("c", 123456789012345678901234567890), ("d", [1.5, {"y": "é"}])]
