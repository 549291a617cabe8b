"""Hostile input (issue 4, item 6): every bad dataset, flag and path is refused before any request.

Each case is checked the way a user meets it: ``evalledger validate`` / ``evalledger run`` as real
subprocesses (exit code 2, a message naming the file and the row/line and field or the flag, no
traceback), and ``run`` also from Python against the loopback fake server, where we can count
requests (none) and look at the output directory (nothing created). ``validate`` and ``run`` share
:func:`evalledger.run.prepare.prepare_run`, so checking both proves ``run`` checks the dataset first.

Decisions these tests pin down (see ``evalledger.datasets``):

* A CSV row with fewer values than the header is refused like one with more: padding it would
  hide a line broken in two by an unquoted newline.
* Ids are text. An id column may mix numbers and strings; the number ``1`` and the string
  ``"1"`` are the same id, so a file holding both is refused as having duplicate ids.
* No field may exceed 16 Mi characters (``$EVALLEDGER_MAX_FIELD_CHARS`` overrides it). A 50 MB
  field is refused quickly with bounded memory, or accepted under a raised limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cli_env, run_many, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.datasets import load_dataset
from evalledger.errors import DatasetError, UsageError
from evalledger.run import prepare_run, run_experiment
from evalledger.run.prepare import run_dir_inside

MODEL = "openai/test-model"
BIG = 50 * 1024 * 1024  # the "50 MB single field"




def assert_refused(r: subprocess.CompletedProcess[str], needles: list[str], name: str) -> None:
    """Exit 2 with a one-line-style message (ours or click's) holding every needle; no traceback."""
    assert r.returncode == 2, (name, r.returncode, r.stderr)
    assert "Traceback" not in r.stderr, (name, r.stderr)
    assert r.stderr.startswith(("error: ", "Usage: ")), (name, r.stderr)
    for needle in needles:
        assert needle in r.stderr, (name, needle, r.stderr)


def cfg(server, data: Path | str, out: Path, **kw) -> RunConfig:
    base = dict(dataset=str(data), model=MODEL, output_dir=out, base_url=server.openai_base_url,
                api_key="sk-test", quiet=True, concurrency=2, max_retry_wait=0.2)
    base.update(kw)
    return RunConfig(**base)


def empty_or_absent(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and list(path.iterdir()) == [])


# ----------------------------------------------------------------------------------- bad datasets


def _qa_line(**fields) -> bytes:
    return (json.dumps(fields) + "\n").encode()


def bad_datasets(d: Path) -> list[tuple[str, Path, list[str]]]:
    """(case, dataset path, substrings the error must contain). Each file is written into ``d``."""
    cases: list[tuple[str, Path, list[str]]] = []

    def add(name: str, filename: str, content: bytes, needles: list[str]) -> None:
        path = d / filename
        path.write_bytes(content)
        cases.append((name, path, [str(path), *needles]))

    add("empty file", "empty.jsonl", b"", ["is empty", "no rows"])
    add("header only", "header.csv", b"question,answer\n", ["is empty", "no rows"])
    add("invalid JSON line", "badline.jsonl",
        _qa_line(question="q1", answer="1") + _qa_line(question="q2", answer="2") + b'{"question": "q3", "answer": \n',
        ["line 3", "invalid JSON"])

    first = _qa_line(question="q1", answer="1")
    second = b'{"question": "caf\xe9", "answer": "2"}\n'  # Latin-1 e-acute in a UTF-8 file
    offset = len(first) + second.index(b"\xe9")
    add("Latin-1 bytes in JSONL", "latin1.jsonl", first + second,
        ["line 2", "not valid UTF-8", "0xe9", f"byte offset {offset}"])
    csv_head = b"question,answer\nq1,1\n"
    add("Latin-1 bytes in CSV", "latin1.csv", csv_head + b"caf\xe9,2\n",
        ["line 3", "not valid UTF-8", f"byte offset {len(csv_head) + 3}"])

    add("ragged CSV row (long)", "long.csv", b"question,answer\nq1,1\nq2,2,surplus\n",
        ["line 3", "3 values", "header (line 1) has 2 columns"])
    add("ragged CSV row (short)", "short.csv", b"id,question,answer\na,q1,1\nb,q2\nc,q3,3\n",
        ["line 3", "2 values", "has 3 columns", "missing 'answer'"])

    add("missing required column", "nocolumn.jsonl",
        _qa_line(question="q1", solution="1") + _qa_line(question="q2", solution="2"),
        ["'answer'", "not found in any row", "columns are: question, solution"])
    add("null and empty question", "nullq.jsonl",
        _qa_line(question="q1", answer="1") + _qa_line(question=None, answer="2")
        + _qa_line(question="q3", answer="3") + _qa_line(question="   ", answer="4"),
        ["'question'", "line 2 (question)", "line 4 (question)", "absent, null or empty"])
    add("duplicate ids", "dup.jsonl",
        _qa_line(id="s1", question="q1", answer="1") + _qa_line(id="s2", question="q2", answer="2")
        + _qa_line(id="s1", question="q3", answer="3"),
        ["duplicate ids in column 'id'", "'s1' (lines 1, 3)"])
    add("ids 1 and \"1\" collide", "mixed.jsonl",
        _qa_line(id=1, question="q1", answer="1") + _qa_line(id="1", question="q2", answer="2"),
        ["duplicate ids in column 'id'", "'1' (lines 1, 2)", 'the number 1 and the string "1" are the same id'])
    add("boolean id", "boolid.jsonl", _qa_line(id=True, question="q1", answer="1"),
        ["line 1", "id column 'id' holds a boolean"])

    folder = d / "folder.jsonl"
    folder.mkdir()
    cases.append(("directory", folder, [str(folder), "is a directory"]))

    loop_a, loop_b = d / "loop_a.jsonl", d / "loop_b.jsonl"
    os.symlink(loop_b.name, loop_a)
    os.symlink(loop_a.name, loop_b)
    cases.append(("symlink loop", loop_a, [str(loop_a), "symlink loop"]))

    fifo = d / "pipe.jsonl"
    os.mkfifo(fifo)  # reading it would block for ever: refused without opening it
    cases.append(("FIFO", fifo, ["pipe.jsonl", "not a regular file"]))
    return cases


def test_validate_refuses_each_bad_dataset_naming_file_line_and_field(tmp_path):
    cases = bad_datasets(tmp_path)
    results = run_many([["validate", "--dataset", str(path)] for _, path, _ in cases], dict(os.environ), tmp_path,
                       timeout=60)
    for (name, _, needles), r in zip(cases, results):
        assert_refused(r, needles, name)
        assert r.stdout == "", (name, r.stdout)
    assert not (tmp_path / "outputs").exists()


def test_run_refuses_each_bad_dataset_before_any_request_or_file(fake_server, tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name, path, needles in bad_datasets(data_dir):
        out = tmp_path / "out"
        with pytest.raises(DatasetError) as info:
            run_experiment(cfg(fake_server, path, out))
        for needle in needles:
            assert needle in str(info.value), (name, needle, str(info.value))
        assert empty_or_absent(out), (name, list(out.iterdir()))
    assert fake_server.request_count == 0


def test_unknown_task_is_refused_by_validate_and_run(fake_server, tmp_path):
    good = write_qa_dataset(tmp_path / "good.jsonl", 3)
    out = tmp_path / "out"
    v, r = run_many([["validate", "--dataset", str(good), "--task", "nosuch"],
                     ["run", "--dataset", str(good), "--task", "nosuch", "--model", MODEL, "--output-dir", str(out)]],
                    cli_env(fake_server), tmp_path)
    for name, res in (("validate", v), ("run", r)):
        assert_refused(res, ["--task 'nosuch'", "unknown task", "qa"], name)
    assert empty_or_absent(out) and fake_server.request_count == 0


def test_mixed_number_and_string_ids_that_do_not_collide_are_text(tmp_path):
    # The decision the collision case rests on: numbers become their decimal text, so these four
    # rows are four distinct ids. It fails if numbers were kept apart from strings (1 vs "1").
    path = tmp_path / "mixed.jsonl"
    path.write_bytes(_qa_line(id=1, question="q", answer="1") + _qa_line(id="a", question="q", answer="2")
                     + _qa_line(id=2.0, question="q", answer="3") + _qa_line(id=2.5, question="q", answer="4"))
    assert [s.id for s in load_dataset(str(path)).samples] == ["1", "a", "2", "2.5"]
    path.write_bytes(_qa_line(id=2, question="q", answer="1") + _qa_line(id=2.0, question="q", answer="2"))
    with pytest.raises(DatasetError, match="duplicate ids in column 'id': '2' \\(lines 1, 2\\)"):
        load_dataset(str(path))


# ----------------------------------------------------------------------------------- a 50 MB field

_MEASURE = """
import atexit, resource, sys
from evalledger.cli import cli
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
atexit.register(lambda: print(f"RSS-KB {base} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}", file=sys.stderr))
cli(sys.argv[1:])
"""


def _validate_measured(path: Path, env: dict[str, str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``evalledger validate`` in a child that reports its peak RSS growth (MB) over start-up."""
    r = subprocess.run([sys.executable, "-c", _MEASURE, "validate", "--dataset", str(path)], env=env, cwd=cwd,
                       capture_output=True, text=True, timeout=60)  # a hang fails here
    base, peak = (int(x) for x in r.stderr.rsplit("RSS-KB ", 1)[1].split())
    r.stderr = r.stderr.rsplit("RSS-KB ", 1)[0]
    return r, (peak - base) / 1024


def test_50_mb_field_is_refused_quickly_with_bounded_memory(tmp_path):
    jsonl = tmp_path / "big.jsonl"
    with jsonl.open("w") as f:
        f.write(json.dumps({"question": "q1", "answer": "1"}) + "\n")
        f.write(json.dumps({"question": "x" * BIG, "answer": "2"}) + "\n")
    # The usual CSV cause: an unbalanced quote swallows the rest of the file into one field.
    csv_path = tmp_path / "big.csv"
    with csv_path.open("w") as f:
        f.write('question,answer\nq1,1\n"unbalanced ' + "x" * BIG + ",2\nq3,3\n")

    r, grew_mb = _validate_measured(jsonl, dict(os.environ), tmp_path)
    assert_refused(r, [str(jsonl), "line 2", "field 'question'", f"{BIG:,} characters", "limit of 16,777,216",
                       "EVALLEDGER_MAX_FIELD_CHARS"], "jsonl")
    assert grew_mb < 8 * BIG / 2**20, grew_mb  # a few copies of the file, not a blow-up

    r, grew_mb = _validate_measured(csv_path, dict(os.environ), tmp_path)
    assert_refused(r, [str(csv_path), "line 3", "field 'question'", "unbalanced quote"], "csv")
    # the csv module keeps a field being parsed as 4 bytes a character: about 12x the file at most
    assert grew_mb < 16 * BIG / 2**20, grew_mb

    # Under a raised limit the same 50 MB field is accepted, still without hanging.
    r, _ = _validate_measured(jsonl, {**os.environ, "EVALLEDGER_MAX_FIELD_CHARS": str(2 * BIG)}, tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 samples OK" in r.stdout


def test_field_limit_env_var_is_checked(tmp_path, monkeypatch):
    path = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    monkeypatch.setenv("EVALLEDGER_MAX_FIELD_CHARS", "10")  # the questions are longer than 10
    with pytest.raises(DatasetError, match=r"line 1: field 'question' holds \d+ characters, more than the limit of 10"):
        load_dataset(str(path))
    monkeypatch.setenv("EVALLEDGER_MAX_FIELD_CHARS", "lots")
    with pytest.raises(UsageError, match="EVALLEDGER_MAX_FIELD_CHARS='lots'"):
        load_dataset(str(path))


# ----------------------------------------------------------------------------------- bad flags


def test_bad_flags_exit_2_before_any_request_or_run_dir(fake_server, tmp_path):
    good = write_qa_dataset(tmp_path / "good.jsonl", 4)
    cases: list[tuple[str, list[str], list[str]]] = [
        ("model without a known prefix", ["--model", "foo"], ["--model 'foo'", "openai/<model>"]),
        ("unknown model prefix", ["--model", "acme/big-1"], ["--model 'acme/big-1'", "--base-url"]),
        ("shard 0/4", ["--shard", "0/4"], ["--shard 0/4", "K must be between 1 and N"]),
        ("shard 5/4", ["--shard", "5/4"], ["--shard 5/4", "K must be between 1 and N"]),
        ("shard 2/0", ["--shard", "2/0"], ["--shard 2/0", "N must be at least 1"]),
        ("shard x", ["--shard", "x"], ["--shard x", "expected K/N"]),
        ("negative concurrency", ["--concurrency", "-3"], ["--concurrency -3", "at least 1"]),
        ("zero concurrency", ["--concurrency", "0"], ["--concurrency 0", "at least 1"]),
        ("limit 0", ["--limit", "0"], ["--limit 0", "at least 1"]),
        ("negative limit", ["--limit", "-2"], ["--limit -2", "at least 1"]),
    ]
    outs = [tmp_path / f"out{i}" for i in range(len(cases))]
    argvs = [["run", "--dataset", str(good), "--output-dir", str(out), "--quiet",
              *(["--model", MODEL] if "--model" not in extra else []), *extra]
             for (_, extra, _), out in zip(cases, outs)]
    for (name, _, needles), out, r in zip(cases, outs, run_many(argvs, cli_env(fake_server), tmp_path)):
        assert_refused(r, needles, name)
        assert empty_or_absent(out), name
    assert fake_server.request_count == 0


# ----------------------------------------------------------------------------------- output dir


def test_output_dir_that_is_a_file_is_refused(fake_server, tmp_path):
    good = write_qa_dataset(tmp_path / "good.jsonl", 3)
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("keep me\n")
    env = cli_env(fake_server)
    as_file, under_file = run_many(
        [["run", "--dataset", str(good), "--model", MODEL, "--output-dir", str(a_file)],
         ["run", "--dataset", str(good), "--model", MODEL, "--output-dir", str(a_file / "sub")]], env, tmp_path)
    assert_refused(as_file, ["--output-dir", "is a file"], "output dir is a file")  # click's own check
    assert_refused(under_file, [f"--output-dir {a_file / 'sub'}", f"cannot create it, {a_file} is a file"],
                   "output dir below a file")
    # From Python there is no click in front: the library refuses too, before any request.
    with pytest.raises(UsageError, match=f"--output-dir {a_file}: is a file, not a directory"):
        run_experiment(cfg(fake_server, good, a_file))
    assert a_file.read_text() == "keep me\n"
    assert fake_server.request_count == 0


def test_run_directory_that_is_a_file_is_refused(fake_server, tmp_path):
    good = write_qa_dataset(tmp_path / "good.jsonl", 3)
    out = tmp_path / "out"
    out.mkdir()
    (out / "r1").write_text("a file where the run directory would go\n")
    with pytest.raises(UsageError, match="--output-dir .*the run directory .*r1 exists but is not a directory"):
        run_experiment(cfg(fake_server, good, out, run_id="r1"))
    assert fake_server.request_count == 0


@pytest.fixture
def immutable_dir(tmp_path):
    """A directory nobody, not even root, can write in: ``chattr +i`` (tests run as root, where
    plain permissions do not stop writes). Skips where the filesystem has no such attribute."""
    d = tmp_path / "frozen"
    d.mkdir()
    r = subprocess.run(["chattr", "+i", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot make a directory immutable here: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["chattr", "-i", str(d)], check=True)


def test_output_dir_not_writable_is_refused_naming_the_flag(fake_server, tmp_path, immutable_dir):
    good = write_qa_dataset(tmp_path / "good.jsonl", 3)
    inside = immutable_dir / "runs"  # does not exist and cannot be created
    existing, missing = run_many(
        [["run", "--dataset", str(good), "--model", MODEL, "--output-dir", str(immutable_dir)],
         ["run", "--dataset", str(good), "--model", MODEL, "--output-dir", str(inside)]],
        cli_env(fake_server), tmp_path)
    assert_refused(existing, [f"--output-dir {immutable_dir}: not writable"], "immutable output dir")
    assert_refused(missing, [f"--output-dir {inside}: not writable", f"created in {immutable_dir}"],
                   "output dir inside an immutable dir")
    assert list(immutable_dir.iterdir()) == []
    assert fake_server.request_count == 0


# ----------------------------------------------------------------------------------- run IDs and paths


def test_run_ids_that_leave_the_output_dir_are_refused(fake_server, tmp_path):
    good = write_qa_dataset(tmp_path / "good.jsonl", 3)
    bad_ids = ["..", ".", "../escape", "a/../../escape", "/tmp/escape", "sub/run", ".hidden", "a\\b"]
    outs = [tmp_path / "nest" / f"out{i}" for i in range(len(bad_ids))]
    argvs = [["run", "--dataset", str(good), "--model", MODEL, "--output-dir", str(out), "--run-id", bad]
             for bad, out in zip(bad_ids, outs)]
    for bad, out, r in zip(bad_ids, outs, run_many(argvs, cli_env(fake_server), tmp_path)):
        assert_refused(r, ["--run-id", repr(bad)], bad)
        assert empty_or_absent(out), bad
    assert not (tmp_path / "escape").exists() and not (tmp_path / "nest" / "escape").exists()
    assert {p.name for p in tmp_path.iterdir()} <= {"good.jsonl", "nest"}
    assert not Path("/tmp/escape").exists()
    assert fake_server.request_count == 0


@pytest.mark.parametrize("run_id", ["..", ".", "", "a/b", "../x", "x/..", "a\x00b"])
def test_run_dir_inside_refuses_anything_but_one_name(tmp_path, run_id):
    # The last line of defence behind RunConfig's --run-id pattern, for derived IDs too.
    with pytest.raises(UsageError, match="must be a single directory name inside --output-dir"):
        run_dir_inside(tmp_path / "out", run_id)


def test_derived_run_dir_stays_inside_output_dir_for_hostile_file_names(tmp_path):
    # A dataset called "..jsonl" has the stem ".", which must not become the run directory's name.
    for name in ("..jsonl", "...csv", "-..-.jsonl"):
        path = tmp_path / name
        path.write_bytes(b"question,answer\nq1,1\n" if name.endswith(".csv") else _qa_line(question="q1", answer="1"))
        out = tmp_path / "out"
        prepared = prepare_run(RunConfig(dataset=str(path), output_dir=out))
        assert prepared.run_dir.parent == out and prepared.run_dir.name not in (".", "..", ""), name
        assert prepared.run_id.startswith("x_"), prepared.run_id
        assert not out.exists()  # preparing creates nothing


def test_validate_does_not_care_about_the_output_dir(tmp_path, immutable_dir):
    # validate writes nothing, so an unwritable current directory must not fail it.
    good = write_qa_dataset(tmp_path / "good.jsonl", 2)
    r = run_many([["validate", "--dataset", str(good)]], dict(os.environ), immutable_dir)[0]
    assert r.returncode == 0, r.stderr
    assert "2 samples OK" in r.stdout

