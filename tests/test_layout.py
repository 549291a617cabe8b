"""The run directory's file names: pinned byte for byte, defined only in ``ledger/layout.py``.

The names are a file format: a run directory made by an earlier version must still be found,
resumed and read. The expected names below are literals on purpose (not built from the layout),
and the files are made by the real writers, so a renamed file fails here first.
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
from helpers import marker, run_config, write_qa_dataset

from evalledger import run_experiment
from evalledger.datasets import shard_of
from evalledger.fsio import file_timestamp
from evalledger.ledger import (
    RunLedger,
    RunPaths,
    StatusWriter,
    is_corrupt_aside,
    is_results_name,
    is_run_dir,
    moved_aside_of,
    results_files,
    resume_state_files,
    shard_of_file,
    shard_of_lock,
    shard_of_resume_state,
    shard_of_status,
    status_files,
    writer_locks,
)
from evalledger.ledger.layout import clean_copy, corrupt_aside, moved_aside_dir, shard_owner_files

SRC = Path(__file__).resolve().parents[1] / "src" / "evalledger"
LAYOUT = SRC / "ledger" / "layout.py"

# What each writer's files are called today, for an unsharded run and for shard 2 of 4.
NAMES = {
    None: {"results": "results.jsonl", "calls": "calls.jsonl", "resume_state": "resume_state.json",
           "errors": "errors.log", "status": "status.json", "status_reserve": ".status.json.reserve",
           "lock": ".lock", "owner": ".lock.owner"},
    (2, 4): {"results": "results.shard-2-of-4.jsonl", "calls": "calls.shard-2-of-4.jsonl",
             "resume_state": "resume_state.shard-2-of-4.json", "errors": "errors.shard-2-of-4.log",
             "status": "status.shard-2-of-4.json", "status_reserve": ".status.shard-2-of-4.json.reserve",
             "lock": ".lock.shard-2-of-4", "owner": ".lock.shard-2-of-4.owner"},
}
SHARDS = list(NAMES)


@pytest.mark.parametrize("shard", SHARDS, ids=["unsharded", "shard-2-of-4"])
def test_run_paths_give_todays_names(tmp_path: Path, shard: tuple[int, int] | None) -> None:
    paths = RunPaths(tmp_path, shard)
    for attr, name in NAMES[shard].items():
        assert getattr(paths, attr) == tmp_path / name, attr
    assert (paths.manifest, paths.run_lock, paths.cache) == (
        tmp_path / "manifest.json", tmp_path / ".lock.run", tmp_path / ".cache")


@pytest.mark.parametrize("shard", SHARDS, ids=["unsharded", "shard-2-of-4"])
def test_the_writers_make_exactly_these_files(tmp_path: Path, shard: tuple[int, int] | None) -> None:
    """What RunLedger and StatusWriter leave on disk, while writing and after a clean close."""
    run_dir = tmp_path / "run"
    names = NAMES[shard]
    ledger = RunLedger(run_dir, shard).open_writer()
    status = StatusWriter(run_dir, shard, "run")
    status.begin(total=2, pending=2)
    ledger.append_records([{"sample_id": "a", "status": "ok"},
                           {"sample_id": "b", "status": "error", "error": {"type": "X", "message": "boom"}}])
    ledger.append_calls([{"sample_id": "b", "call_key": "k", "response": {}}])
    ledger.write_resume_state({"completed_samples": 1}, "hash")
    writing = {names[k] for k in ("results", "calls", "resume_state", "errors", "status", "status_reserve",
                                  "lock", "owner")} | {".lock.run"}
    assert set(os.listdir(run_dir)) == writing
    status.finish("interrupted", reason="signal", exit_code=130)
    ledger.close()
    # A clean close removes the owner file; the final marker consumes the reserve.
    assert set(os.listdir(run_dir)) == writing - {names["owner"], names["status_reserve"]}

    assert results_files(run_dir) == [run_dir / names["results"]]
    assert status_files(run_dir) == [run_dir / names["status"]]
    assert resume_state_files(run_dir) == [run_dir / names["resume_state"]]
    assert writer_locks(run_dir) == [run_dir / names["lock"]]
    for path, parse in ((names["results"], shard_of_file), (names["status"], shard_of_status),
                        (names["resume_state"], shard_of_resume_state)):
        assert parse(run_dir / path) == shard, path
    assert shard_of_lock(names["lock"]) == shard


def test_a_real_sharded_run_names_its_files_as_before(fake_server, tmp_path: Path) -> None:
    """Shard 2/4 of a run through the API, one of its samples failing: every file it leaves."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    ids = [f"s{i:05d}" for i in range(12)]
    mine = [i for i, sid in enumerate(ids) if shard_of(sid, 4) == 2]
    assert mine, "shard 2/4 of 12 samples is empty: pick another dataset size"
    fake_server.fail_when(marker(mine[0]), 400)
    summary = run_experiment(run_config(fake_server, data, tmp_path / "out", shard=(2, 4), run_id="r",
                                        checkpoint_every=1))
    run_dir = Path(summary.run_dir)
    assert summary.errors == 1 and summary.ok == len(mine) - 1
    names = NAMES[(2, 4)]
    expected = {names[k] for k in ("results", "resume_state", "errors", "status", "lock")}
    # .cache/ holds derived data only, made when a file is big enough to be worth indexing.
    assert {p.name for p in run_dir.iterdir()} - {".cache"} == expected | {"manifest.json", ".lock.run"}
    assert is_run_dir(run_dir) and not is_run_dir(tmp_path / "out")


def test_names_parse_back_and_nothing_else_does(tmp_path: Path) -> None:
    assert [shard_of_lock(n) for n in (".lock", ".lock.shard-3-of-7")] == [None, (3, 7)]
    for other in (".lock.run", ".lock.owner", ".lock.shard-3-of-7.owner", ".lockx", ".lock.shard-a-of-7"):
        assert shard_of_lock(other) is False, other
    for name in ("results.jsonl", "results.shard-1-of-2.jsonl"):
        assert is_results_name(name)
    for name in ("results.jsonl.corrupt-20260101T000000.000000Z", "results-merged.jsonl", "calls.jsonl"):
        assert not is_results_name(name)

    stamp = file_timestamp()
    results = tmp_path / "results.shard-1-of-2.jsonl"
    assert corrupt_aside(results, stamp).name == f"results.shard-1-of-2.jsonl.corrupt-{stamp}"
    assert corrupt_aside(results, stamp, "newer").name == f"results.shard-1-of-2.jsonl.newer-{stamp}"
    assert is_corrupt_aside(corrupt_aside(results, stamp).name)
    assert not is_corrupt_aside(corrupt_aside(results, stamp, "newer").name)
    assert not is_corrupt_aside("results.jsonl.corrupt-yesterday")
    assert clean_copy(results, stamp).name == f".results.shard-1-of-2.jsonl.clean-{stamp}.tmp"

    aside = moved_aside_dir(tmp_path / "my-run.v2", stamp)
    assert aside.name == f"my-run.v2.old-{stamp}" and moved_aside_of(aside.name) == ("my-run.v2", stamp)
    assert moved_aside_of("my-run.v2") is None and moved_aside_of("r1.old-20260101") is None

    for name in (".lock", ".lock.owner", ".lock.shard-1-of-2", ".lock.shard-1-of-2.owner",
                 ".lock.shard-2-of-2.owner", ".lock.run"):
        (tmp_path / name).touch()
    assert writer_locks(tmp_path) == [tmp_path / ".lock", tmp_path / ".lock.shard-1-of-2"]
    assert shard_owner_files(tmp_path) == [tmp_path / ".lock.shard-1-of-2.owner", tmp_path / ".lock.shard-2-of-2.owner"]


# ------------------------------------------------------------------ nobody else builds a name
# Matched against every string in the source without whitespace (names and globs have none,
# messages and help texts do) except docstrings; an f-string is read with ``{}`` for each
# placeholder (``f"results{sfx}.jsonl"`` is ``results{}.jsonl``).
HAND_BUILT = [
    re.compile(r"^(results|calls|resume_state|status|errors)(\{\}|\*|\.shard-|\.jsonl?$|\.log$|\.$)"),
    re.compile(r"(^|/)manifest\.json$"),
    re.compile(r"^\.lock"),
    re.compile(r"\.owner$"),
    re.compile(r"\.reserve$"),
    re.compile(r"\.shard-"),
    re.compile(r"\.(corrupt|newer|old|clean)-(\{\}|\*|\\d|\(|$)"),
    re.compile(r"\\\.(lock|shard|corrupt|old|clean)"),
    re.compile(r"^\.cache$"),
]


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _strings(source: str) -> list[tuple[int, str]]:
    """(line, text) of every string literal of ``source`` but docstrings, f-strings as templates."""
    tree = ast.parse(source)
    skip = _docstrings(tree)
    inside_fstrings = {id(v) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr) for v in node.values}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            out.append((node.lineno, text))
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in skip
              and id(node) not in inside_fstrings):
            out.append((node.lineno, node.value))
    return out


def hand_built_names(source: str) -> list[tuple[int, str]]:
    return [(line, text) for line, text in _strings(source)
            if not re.search(r"\s", text) and any(p.search(text) for p in HAND_BUILT)]


def test_the_check_catches_names_built_by_hand() -> None:
    """Each way a name used to be built elsewhere is caught (so the next test can fail)."""
    old_code = [
        'p = run_dir / f"results{sfx}.jsonl"', 'p = run_dir / f"calls{sfx}.jsonl"',
        'p = run_dir / f"status{shard_suffix(k)}.json"', 'p = run_dir / f"results.shard-{k}-of-{n}.jsonl"',
        'p = run_dir / f"resume_state{sfx}.json"', 'p = run_dir / (f"errors{sfx}.log")',
        'x = run_dir.glob("resume_state*.json")', 'x = run_dir.glob(".lock.shard-*-of-*")',
        'x = run_dir.glob(".lock*")', 'p = run_dir / ".lock.run"', 'p = lock.with_name(lock.name + ".owner")',
        'p = run_dir / f".lock{sfx}"', 'p = run_dir / f".{name}.reserve"', 'p = d / "manifest.json"',
        'p = path.with_name(f"{path.name}.corrupt-{stamp}")', 'p = d.with_name(f"{d.name}.old-{stamp}")',
        'p = path.with_name(f".{path.name}.clean-{stamp}.tmp")', 'n = name[len("results."):-len(".jsonl")]',
        'R = re.compile(r"^(?P<run_id>.+)\\.old-(?P<stamp>\\d{8})$")', 'ok = ".old-" not in d.name',
        'R = re.compile(r"\\.corrupt-\\d{8}T\\d{6}\\.\\d{6}Z$")',
    ]
    for line in old_code:
        assert hand_built_names(line), line
    fine = ['"""Writes ``results.jsonl`` and ``.lock.shard-K-of-N``."""', 'x = r.get("status")',
            'x = {"status": "ok", "errors_by_type": {}}', 'help = "Write resume_state.json every N records"',
            'help = "Only remove .corrupt-* leftovers"', 'print(f"see {run_dir / name} ({n} .lock files)")']
    for line in fine:
        assert not hand_built_names(line), line


def test_no_module_but_the_layout_builds_a_run_file_name() -> None:
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path == LAYOUT:
            continue
        for line, text in hand_built_names(path.read_text(encoding="utf-8")):
            found.append(f"{path.relative_to(SRC)}:{line}: {text!r}")
    assert not found, "run-directory names built outside ledger/layout.py:\n" + "\n".join(found)
