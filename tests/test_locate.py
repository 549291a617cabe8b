"""A run reference means one run: a RunSummary is its own directory; a run ID that could name two
runs is refused with both paths; a run this process made under another output_dir is found."""

from __future__ import annotations

import os

import pytest
from helpers import write_qa_dataset

from evalledger import RunConfig, UsageError, estimate_experiment, get_stats, load_results, run_experiment


def _cfg(server, data, out, **kw) -> RunConfig:
    return RunConfig(dataset=str(data), model="openai/test-model", output_dir=out, base_url=server.openai_base_url,
                     api_key="sk-test", quiet=True, **kw)


def test_get_stats_reads_the_run_that_was_meant(fake_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    big = write_qa_dataset(tmp_path / "qa.jsonl", 12)
    # A namesake under the default outputs/: the same experiment, run earlier with more samples.
    namesake = run_experiment(_cfg(fake_server, big, "outputs"))
    mine = run_experiment(_cfg(fake_server, big, "outputs-py", limit=5))
    assert mine.run_id == namesake.run_id

    assert get_stats(mine)["completed_samples"] == 5  # the summary names its directory
    assert len(load_results(mine)) == 5
    with pytest.raises(UsageError) as e:
        get_stats(mine.run_id)  # outputs/<id> and outputs-py/<id> (made by this process)
    message = str(e.value)
    assert "could mean 2 runs" in message
    assert os.path.join("outputs-py", mine.run_id) in message and os.path.join("outputs", mine.run_id) in message
    assert get_stats(mine.run_id, output_dir="outputs")["completed_samples"] == 12  # said explicitly
    assert get_stats(mine.run_id, output_dir="outputs-py")["completed_samples"] == 5


def test_a_run_made_elsewhere_by_this_process_resolves_by_its_id(fake_server, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    s = run_experiment(_cfg(fake_server, data, tmp_path / "elsewhere"))
    assert not (tmp_path / "outputs").exists()
    assert get_stats(s.run_id)["completed_samples"] == 4
    assert len(load_results(s.run_id)) == 4


def test_estimate_does_not_project_from_another_endpoints_answers(fake_server, second_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 10)
    fake_server.responder = lambda body: "The answer is 1. " + "word " * 300  # long answers here
    assert run_experiment(_cfg(fake_server, data, tmp_path / "out", limit=4)).exit_code in (0, 1)
    same = estimate_experiment(_cfg(fake_server, data, tmp_path / "out"))
    assert "observed average of 4" in same.basis
    moved = estimate_experiment(_cfg(second_server, data, tmp_path / "out", allow_endpoint_change=True))
    assert "observed" not in moved.basis and "another endpoint" in moved.basis
    assert moved.output_tokens != same.output_tokens
