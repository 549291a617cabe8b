"""The README's examples do what the README says: the custom task, copied out of README.md as it
stands, runs through the real CLI and scores a sentence that names the capital as correct."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from helpers import cli_env, read_lines, run_cli

from evalledger import load_study_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _block_with(marker: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README has {len(found)} python blocks with {marker!r}"
    return found[0]


def test_readme_custom_task_scores_what_it_means(fake_server, tmp_path):
    (tmp_path / "my_tasks.py").write_text(_block_with("class Capitals(Task)"))
    rows = [{"id": "fr", "country": "France", "capital": "Paris"},
            {"id": "it", "country": "Italy", "capital": "Rome"},
            {"id": "de", "country": "Germany", "capital": "Berlin"}]
    (tmp_path / "capitals.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    answers = {"France": "The capital of France is Paris.", "Italy": "rome",
               "Germany": "I believe it is Bonn."}

    def responder(body: dict) -> str:
        question = body["messages"][-1]["content"]
        return next(a for country, a in answers.items() if country in question)

    fake_server.responder = responder
    env = cli_env(fake_server, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    r = run_cli(["run", "--dataset", "capitals.jsonl", "--task", "my_tasks:Capitals", "--model", "openai/gpt-4o-mini",
                 "--output-dir", "out", "-q", "--json"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    run_dir = tmp_path / "out" / json.loads(r.stdout)["run_id"]
    records, _ = read_lines(run_dir / "results.jsonl")
    correct = {rec["sample_id"]: rec["correct"] for rec in records}
    assert correct == {"fr": True, "it": True, "de": False}


def _toml_blocks() -> list[str]:
    return re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_study_files_load_as_the_grids_they_describe(tmp_path, monkeypatch):
    """Both study files in the README load: the embedded-model study and the two-model grid."""
    monkeypatch.chdir(tmp_path)
    blocks = _toml_blocks()
    assert len(blocks) == 2, len(blocks)
    loaded = []
    for i, text in enumerate(blocks):
        path = tmp_path / f"study{i}.toml"
        path.write_text(text, encoding="utf-8")
        loaded.append(load_study_config(path))
    demo = next(s for s in loaded if [m.model for m in s.model_entries()] == ["local/smollm2"])
    pairs = demo.pairs()
    assert [p.task for p in pairs] == ["qa", "self-correct"]
    assert all(p.config().epochs == 3 and p.config().limit == 20 for p in pairs)
