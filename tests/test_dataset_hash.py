"""The remembered sha256 of a dataset file (``datasets/hashcache.py``): a resume of a file hashed
before reads nothing to find its run, and any change to the file is noticed."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest
from helpers import write_qa_dataset

from evalledger.config import RunConfig
from evalledger.datasets import hash_cache_dir, hashcache, hashed_dataset
from evalledger.datasets import index as dataset_index
from evalledger.run import prepare, prepare_run, run_experiment


@pytest.fixture
def settled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files count as settled at once (really: unchanged for 2 s before they were hashed)."""
    monkeypatch.setattr(hashcache, "STABLE_NS", 0)


def sha_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_hash_is_remembered_and_used_while_the_stat_is_the_same(settled: None, tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    raw, _, sha = hashed_dataset(data, remembered=True)
    assert raw == data.read_bytes() and sha == sha_of(data)
    raw, _, again = hashed_dataset(data, remembered=True)
    assert raw is None and again == sha  # not read
    raw, _, fresh = hashed_dataset(data, remembered=False)
    assert raw is not None and fresh == sha  # validate reads and hashes whatever is remembered


@pytest.mark.parametrize("change", ["append", "same size", "replaced"])
def test_any_change_to_the_file_is_noticed(settled: None, tmp_path: Path, change: str) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    hashed_dataset(data, remembered=True)
    text = data.read_text()
    if change == "append":
        data.write_text(text + text.splitlines()[0].replace("s00000", "s00099") + "\n")
    elif change == "same size":
        st = data.stat()
        data.write_text(text.replace("Question 3", "Question 9"))
        os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime put back: the change time still moved
    else:
        other = tmp_path / "other.jsonl"
        other.write_text(text.replace("Question 3", "Question 9"))
        other.replace(data)  # another inode at the same path
    raw, _, sha = hashed_dataset(data, remembered=True)
    assert raw is not None and sha == sha_of(data)


def test_a_file_changed_just_before_it_was_hashed_is_not_remembered(tmp_path: Path) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)  # written now: within STABLE_NS of the hashing
    hashed_dataset(data, remembered=True)
    assert not hash_cache_dir().exists() or not any(hash_cache_dir().iterdir())
    raw, _, _ = hashed_dataset(data, remembered=True)
    assert raw is not None


def test_a_damaged_or_foreign_entry_is_ignored_and_the_switch_turns_it_off(settled: None, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    hashed_dataset(data, remembered=True)
    [entry] = list(hash_cache_dir().iterdir())
    good = json.loads(entry.read_text())
    for damaged in ({**good, "sha256": "0" * 64}, {**good, "path": "/elsewhere"}, "not json"):
        entry.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
        raw, _, sha = hashed_dataset(data, remembered=True)
        assert raw is not None and sha == sha_of(data)
    monkeypatch.setenv("EVALLEDGER_HASH_CACHE", "off")
    entry.unlink()
    hashed_dataset(data, remembered=True)
    assert not entry.exists()


def test_a_resume_of_a_validated_file_reads_none_of_it(settled: None, fake_server, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dataset_index, "MIN_BYTES", 0)
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    config = RunConfig(dataset=str(data), model="openai/test-model", output_dir=tmp_path / "out",
                       base_url=fake_server.openai_base_url, api_key="sk-test", quiet=True)
    first = run_experiment(config)
    assert first.exit_code == 0

    def no_read(path: Path) -> None:
        raise AssertionError(f"{path} was read")

    monkeypatch.setattr(hashcache, "read_dataset_file", no_read)
    monkeypatch.setattr(prepare, "read_dataset_file", no_read)
    again = run_experiment(config)
    assert again.exit_code == 0 and again.run_id == first.run_id and again.skipped_completed == 8


def test_a_remembered_hash_the_bytes_contradict_is_dropped(settled: None, fake_server, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    config = RunConfig(dataset=str(data), model="openai/test-model", output_dir=tmp_path / "out",
                       base_url=fake_server.openai_base_url, api_key="sk-test", quiet=True)
    truth = prepare_run(config, use_index=False)
    hashcache.remember_sha256(data, data.stat(), "f" * 64, time.time_ns())  # a lie under the file's very stat
    prepared = prepare_run(config)
    assert prepared.run_id == truth.run_id and prepared.dataset.sha256 == sha_of(data)
    _, _, remembered = hashed_dataset(data, remembered=True)
    assert remembered == sha_of(data)  # the lie was dropped; what is remembered now is the file's hash
