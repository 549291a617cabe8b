"""What readers take from a run's manifest: model, task, dataset, sample count, epochs, creation time
and the ids that are not in the dataset, each field checked so that a hand-edited manifest never crashes a
reader (a field of the wrong type reads as unknown, and the problem is said)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalledger.errors import LedgerCorruptError
from evalledger.ledger import RunLedger, RunPaths, manifest_epochs


@dataclass
class ManifestFacts:
    """What readers take from a run's manifest, each field checked: a wrong type reads as unknown.

    ``problem`` says what was wrong (unreadable file, a field of the wrong type), or is None.
    """

    model: str | None = None
    task: str | None = None
    dataset: str | None = None
    sample_count: int | None = None
    epochs: int = 1  # the largest --epochs K ever asked for (1: a run without repeats)
    created_at: str | None = None
    ids_not_in_dataset: frozenset[str] = frozenset()
    problem: str | None = None


def _text_or_none(value: Any, what: str, problems: list[str]) -> str | None:
    if value is None or type(value) is str:
        return value
    problems.append(f"{what} is not a string")
    return None


def read_manifest_facts(run_dir: str | Path) -> ManifestFacts:
    """The manifest's facts for readers; never raises for what the file holds (see :class:`ManifestFacts`)."""
    try:
        m = RunLedger(run_dir).read_manifest() or {}
    except LedgerCorruptError as e:  # still worth showing what the results say
        return ManifestFacts(problem=e.message)
    problems: list[str] = []
    config, dataset = m.get("config"), m.get("dataset")
    if config is not None and not isinstance(config, dict):
        problems.append("config is not an object")
    if dataset is not None and not isinstance(dataset, dict):
        problems.append("dataset is not an object")
    count = m.get("sample_count")
    if count is not None and (type(count) is not int or count < 0):
        problems.append("sample_count is not a whole number")
        count = None
    raw_epochs = m.get("epochs")
    if raw_epochs is not None and (type(raw_epochs) is not int or raw_epochs < 1):
        problems.append("epochs is not a whole number of at least 1")
    foreign = m.get("ids_not_in_dataset")
    if foreign is None:
        foreign = []
    elif not isinstance(foreign, list):
        problems.append("ids_not_in_dataset is not a list")
        foreign = []
    elif not all(type(i) is str for i in foreign):
        problems.append("ids_not_in_dataset holds values that are not strings (ignored)")
    facts = ManifestFacts(
        model=_text_or_none(config.get("model") if isinstance(config, dict) else None, "config.model", problems),
        task=_text_or_none(m.get("task"), "task", problems),
        dataset=_text_or_none(dataset.get("name") if isinstance(dataset, dict) else None, "dataset.name", problems),
        sample_count=count,
        epochs=manifest_epochs(m),
        created_at=_text_or_none(m.get("created_at"), "created_at", problems),
        ids_not_in_dataset=frozenset(i for i in foreign if type(i) is str),
    )
    if problems:
        facts.problem = f"{RunPaths(Path(run_dir)).manifest}: " + "; ".join(problems) + " (read as unknown)"
    return facts


__all__ = ["ManifestFacts", "read_manifest_facts"]
