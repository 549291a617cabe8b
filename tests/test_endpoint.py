"""The endpoint is part of what a run is: recorded in the manifest, and a resume against another
one is refused field by field unless ``--allow-endpoint-change`` says it is the same model."""

from __future__ import annotations

import json

import pytest
from helpers import cli_env, run_cli, write_qa_dataset

from evalledger import ConfigDriftError, RunConfig, run_experiment
from evalledger.providers import endpoint_for

MODEL = "openai/test-model"


def _argv(data, out, *extra: str) -> list[str]:
    return ["run", "-d", str(data), "-m", MODEL, "--output-dir", str(out), "-q", "--json", *extra]


def test_another_endpoint_is_refused_and_merges_nothing(fake_server, second_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    out = tmp_path / "out"
    first = run_cli(_argv(data, out, "--limit", "3"), cli_env(fake_server))
    assert first.returncode == 0, first.stderr
    run_dir = out / json.loads(first.stdout)["run_id"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["endpoint"] == fake_server.openai_base_url.rstrip("/")
    results = (run_dir / "results.jsonl").read_bytes()

    other = run_cli(_argv(data, out), cli_env(second_server))
    assert other.returncode == 2
    assert "another endpoint" in other.stderr
    assert f"endpoint: run has '{fake_server.openai_base_url.rstrip('/')}', this command has " \
           f"'{second_server.openai_base_url.rstrip('/')}'" in other.stderr
    assert "--allow-endpoint-change" in other.stderr
    assert second_server.request_count == 0
    assert (run_dir / "results.jsonl").read_bytes() == results

    # The same model behind another address, knowingly: accepted, and both endpoints are recorded.
    allowed = run_cli(_argv(data, out, "--allow-endpoint-change"), cli_env(second_server))
    assert allowed.returncode == 0, allowed.stderr
    assert "the endpoint changed from" in allowed.stderr
    assert second_server.request_count == 3  # only the samples the first server had not answered
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["endpoint"] == second_server.openai_base_url.rstrip("/")
    assert manifest["endpoints"] == [fake_server.openai_base_url.rstrip("/"), second_server.openai_base_url.rstrip("/")]


def test_the_python_api_refuses_the_same_way(fake_server, second_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    base = dict(dataset=str(data), model=MODEL, output_dir=tmp_path / "out", api_key="sk-test", quiet=True)
    assert run_experiment(RunConfig(**base, base_url=fake_server.openai_base_url)).exit_code == 0
    with pytest.raises(ConfigDriftError, match="another endpoint"):
        run_experiment(RunConfig(**base, base_url=second_server.openai_base_url, limit=None))
    assert second_server.request_count == 0


def test_endpoint_resolution(monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    assert endpoint_for("openai/gpt-4o-mini") == "https://api.openai.com/v1"
    assert endpoint_for("anthropic/claude") == "https://api.anthropic.com"
    assert endpoint_for("vllm/llama") == "http://127.0.0.1:8000/v1"
    assert endpoint_for("local/smollm2") == "local:smollm2"
    assert endpoint_for("my-model", "http://10.0.0.5:9000/v1/") == "http://10.0.0.5:9000/v1"
    monkeypatch.setenv("OPENAI_BASE_URL", "http://proxy:8080/v1")
    assert endpoint_for("openai/gpt-4o-mini") == "http://proxy:8080/v1"
    assert endpoint_for("openai/gpt-4o-mini", "http://explicit/v1") == "http://explicit/v1"
