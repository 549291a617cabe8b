"""A study's config file: the grid as TOML (``evalledger study --config``), and the file that
reproduces a StudyConfig (``--print-config``).

```toml
datasets = ["gsm8k", { dataset = "humaneval", task = "humaneval", allow-code-execution = true }]
task = "self-correct"        # or tasks = ["qa", "self-correct"]; a [[datasets]] entry may have its own
max-cost = 50.0              # the whole grid's budget

[shared]                     # every run's options (they may also sit at the top of the file)
limit = 100
epochs = 3

[[models]]
model = "openai/gpt-4o-mini"
concurrency = 32
rpm = 3000

[[models]]
name = "llama"               # its label in the summary
model = "vllm/meta-llama/Llama-3.1-8B-Instruct"
base-url = "http://gpu-box:8000/v1"
price-input = 0.0
price-output = 0.0
```

``models`` and ``datasets`` are arrays whose elements are names or tables (``[[models]]`` is the
same as ``models = [{…}, …]``). A pair's options: ``[shared]``, then its dataset's, then its
model's (the later wins), then the command line's, which override every table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from evalledger.configfile.emit import toml_lines, toml_value
from evalledger.configfile.keys import (
    RUN_KEYS,
    attributed,
    file_path,
    key_of_field,
    normal_key,
    read_options,
    shown,
)
from evalledger.configfile.source import KeyPath, TomlSource
from evalledger.errors import UsageError
from evalledger.study import StudyConfig, StudyDataset, StudyModel

STUDY_FILE_HEADER = (
    "# evalledger study grid: `evalledger study --config FILE` runs this grid (the same run IDs);\n"
    "# flags given beside --config override the file. Option keys are run's long flag names;\n"
    "# relative paths are read from this file's directory.\n"
)

_GRID_KEYS = ("task", "tasks", "max-cost")
_TOP_OWN = ("models", "datasets", "shared", *_GRID_KEYS)
_MODEL_OWN = ("model", "name")
_DATASET_OWN = ("dataset", "task", "tasks")
_NOT_HERE = {"dataset": "list the datasets under `datasets`", "model": "list the models under `models`",
             "run_id": "each pair has its own run ID"}
_IN_ENTRIES = {**_NOT_HERE, "max_cost": "max-cost is the whole grid's budget: set it at the top of the file"}
_IN_MODELS = {**_IN_ENTRIES, "task": "a model's pairs take the grid's task (or their dataset's)"}
_GRID_OVERRIDES = frozenset({"models", "datasets", "task", "tasks", "max_cost"})
_RUN_FIELDS = frozenset(o.field for o in RUN_KEYS.values()) | {"api_key"}


Found = tuple[Any, KeyPath]  # a value of the file and where it is


class _Reader:
    """Reads one study file into StudyConfig's parts, remembering where each value came from."""

    def __init__(self, source: TomlSource) -> None:
        self.source = source
        self.models: list[StudyModel] = []
        self.model_at: list[dict[str, KeyPath]] = []  # per model: field → key path
        self.datasets: list[StudyDataset] = []
        self.dataset_at: list[dict[str, KeyPath]] = []
        self.raw_datasets: list[str] = []  # as the file wrote them, to match --datasets against

    def error(self, at: KeyPath, message: str) -> UsageError:
        return self.source.error(at, message)

    def shared_table(self) -> Mapping[str, Any]:
        shared = self.source.data.get("shared", {})
        if not isinstance(shared, dict):
            raise self.error(("shared",), "shared: expected a table ([shared]) of run options")
        return shared

    def grid_value(self, name: str) -> Found | None:
        """A grid key (task, tasks, max-cost) from the top of the file or from [shared] (not both)."""
        top = _own(self.source.data, (), (name,)).get(name)
        shared = _own(self.shared_table(), ("shared",), (name,)).get(name)
        if top is not None and shared is not None:
            raise self.error(shared[1], f"{name!r} is given twice (at the top and in [shared])")
        return top or shared

    def shared_options(self) -> tuple[dict[str, Any], dict[str, KeyPath]]:
        top, top_at = read_options(self.source, self.source.data, (), own=_TOP_OWN, refused=_NOT_HERE)
        shared, shared_at = read_options(self.source, self.shared_table(), ("shared",), own=_GRID_KEYS,
                                         refused=_NOT_HERE)
        for field in sorted(set(top) & set(shared)):
            key = key_of_field(field).key
            raise self.error(shared_at[field], f"{key!r} is given twice (at the top and in [shared])")
        return {**top, **shared}, {**top_at, **shared_at}

    def tasks(self, task: Found | None, tasks: Found | None) -> tuple[str, ...]:
        """``task = "x"`` or ``tasks = ["x", "y"]`` (not both) as a tuple; () when neither is given."""
        if task is not None and tasks is not None:
            raise self.error(tasks[1], "give task or tasks, not both")
        if task is not None:
            value, at = task
            if not isinstance(value, str) or not value:
                raise self.error(at, f'task = {shown(value)}: expected a task name such as "qa" or "self-correct"')
            return (value,)
        if tasks is not None:
            value, at = tasks
            if not (isinstance(value, list) and value and all(isinstance(t, str) and t for t in value)):
                raise self.error(at, f'tasks = {shown(value)}: expected a list of task names such as ["qa", "mcq"]')
            return tuple(value)
        return ()

    def grid_tasks(self) -> tuple[str, ...]:
        return self.tasks(self.grid_value("task"), self.grid_value("tasks"))

    def max_cost(self) -> float | None:
        found = self.grid_value("max-cost")
        if found is None:
            return None
        value, at = found
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise self.error(at, f"max-cost = {shown(value)}: expected a positive number of USD "
                                 "(the whole grid's budget)")
        return float(value)

    def entries(self, name: str, what: str) -> list[tuple[dict[str, Any], KeyPath, KeyPath]]:
        """The elements of ``models`` or ``datasets``, each as a table (a bare name is a table of
        just its ``name`` key), with its path and the path of that name."""
        value = self.source.data.get(name)
        if value is None:
            return []
        if not isinstance(value, list) or not value:
            raise self.error((name,), f"{name} = {shown(value)}: expected a list of {name} (names, or tables: "
                                      f"[[{name}]])")
        out = []
        for i, entry in enumerate(value):
            at: KeyPath = (name, i)
            if isinstance(entry, str):
                out.append(({what: entry}, at, at))
            elif isinstance(entry, dict):
                out.append((entry, at, (*at, what)))
            else:
                raise self.error(at, f'{shown(entry)}: expected a {what} name or a table with {what} = "…"')
        return out

    def read_models(self) -> None:
        labels: dict[str, KeyPath] = {}
        for entry, at, at_model in self.entries("models", "model"):
            own = _own(entry, at, _MODEL_OWN)
            model = own.get("model", (None, at_model))[0]
            if not isinstance(model, str) or not model:
                raise self.error(at_model, 'each model needs model = "provider/name" (a string)')
            name, at_name = own.get("name", (None, at))
            if name is not None and (not isinstance(name, str) or not name):
                raise self.error(at_name, f"name = {shown(name)}: expected a label (a string)")
            options, origins = read_options(self.source, entry, at, own=_MODEL_OWN, refused=_IN_MODELS)
            label = name or model
            if label in labels:
                raise self.error(at, f"model {label!r} is listed twice (also at {self.source.where(labels[label])}); "
                                     "a model × dataset pair is one run: list each model once")
            labels[label] = at
            self.models.append(StudyModel(model, name=name, options=options))
            self.model_at.append({**origins, "model": at_model})

    def read_datasets(self) -> None:
        for entry, at, at_dataset in self.entries("datasets", "dataset"):
            own = _own(entry, at, _DATASET_OWN)
            dataset = own.get("dataset", (None, at_dataset))[0]
            if not isinstance(dataset, str) or not dataset:
                raise self.error(at_dataset, 'each dataset needs dataset = "…" (a built-in name or a file)')
            tasks = self.tasks(own.get("task"), own.get("tasks"))
            options, origins = read_options(self.source, entry, at, own=_DATASET_OWN, refused=_IN_ENTRIES)
            resolved = file_path("dataset", dataset, self.source.base_dir)
            self.datasets.append(StudyDataset(resolved, tasks=tasks, options=options))
            self.dataset_at.append({**origins, "dataset": at_dataset})
            self.raw_datasets.append(dataset)


def _own(table: Mapping[str, Any], at: KeyPath, names: tuple[str, ...]) -> dict[str, Found]:
    """The keys of ``table`` among ``names`` (either spelling), with where each is."""
    return {normal_key(k): (v, (*at, k)) for k, v in table.items() if normal_key(k) in names}


def load_study_config(path: str | Path, **overrides: Any) -> StudyConfig:
    """The :class:`StudyConfig` a TOML grid file describes (see this module's docstring), with
    ``overrides`` over it: ``models``/``datasets`` (names; one the file lists keeps its options),
    ``task``/``tasks`` (for every pair, over the datasets' own), ``max_cost``, and any RunConfig
    field, which then holds for every pair (over the file's shared, model and dataset values alike).

    An unknown key, a value of the wrong type or a bad value raises :class:`UsageError` naming
    the file, the line and what is allowed.
    """
    unknown = set(overrides) - _GRID_OVERRIDES - _RUN_FIELDS
    if unknown:
        raise TypeError(f"load_study_config() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    source = TomlSource.read(path)
    reader = _Reader(source)
    shared, shared_at = reader.shared_options()
    reader.read_models()
    reader.read_datasets()
    grid_tasks = reader.grid_tasks()
    max_cost = reader.max_cost()

    run_overrides = {k: v for k, v in overrides.items() if k not in _GRID_OVERRIDES}
    reader.models = [replace(m, options=_without(m.options, run_overrides)) for m in reader.models]
    reader.datasets = [replace(d, options=_without(d.options, run_overrides)) for d in reader.datasets]
    models: list[Any] = list(reader.models)
    datasets: list[Any] = list(reader.datasets)
    if "task" in overrides or "tasks" in overrides:
        grid_tasks = tuple(overrides.get("tasks") or ()) or (overrides.get("task"),)
        datasets = [replace(d, tasks=()) for d in datasets]
    if "models" in overrides:
        models = _chosen(overrides["models"], [((m.model, m.name), m) for m in models], StudyModel)
    if "datasets" in overrides:
        named = [((raw, d.dataset), d) for raw, d in zip(reader.raw_datasets, datasets)]
        datasets = _chosen(overrides["datasets"], named, StudyDataset)
    if "max_cost" in overrides:
        max_cost = overrides["max_cost"]
    if not models:
        raise source.error((), 'no models: add models = ["provider/name", …] or [[models]] tables, or pass --models')
    if not datasets:
        raise source.error((), 'no datasets: add datasets = ["gsm8k", …] or [[datasets]] tables, or pass --datasets')
    several = len(grid_tasks) > 1
    try:
        study = StudyConfig(models=tuple(models), datasets=tuple(datasets), max_cost=max_cost,
                            task=None if several or not grid_tasks else grid_tasks[0],
                            tasks=grid_tasks if several else (),
                            run_options={**shared, **run_overrides})
    except UsageError as e:
        raise UsageError(f"{source.path}: {e.message}") from None
    _check_pairs(source, study, reader, {f: at for f, at in shared_at.items() if f not in run_overrides})
    return study


def _without(options: Mapping[str, Any], run_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's options without those the command line sets for every pair."""
    return {k: v for k, v in options.items() if k not in run_overrides}


def _chosen(wanted: Sequence[Any], named: Sequence[tuple[tuple[str | None, ...], Any]], make: Any) -> list[Any]:
    """``wanted`` as entries: a name the file lists (under any of its names) keeps its entry."""
    out = []
    for w in wanted:
        match = next((entry for names, entry in named if w in names), None) if isinstance(w, str) else w
        out.append(match if match is not None else make(w))
    return out


def _check_pairs(source: TomlSource, study: StudyConfig, reader: _Reader, shared_at: dict[str, KeyPath]) -> None:
    """Build every pair's RunConfig now, so that a bad value is reported at its line before anything runs."""
    model_at = {id(m): at for m, at in zip(reader.models, reader.model_at)}
    dataset_at = {id(d): at for d, at in zip(reader.datasets, reader.dataset_at)}
    for m in study.model_entries():
        for d in study.dataset_entries():
            at_of = {"model": model_at.get(id(m), {}), "dataset": dataset_at.get(id(d), {}), "shared": shared_at}
            origins: dict[str, KeyPath] = {}
            for layer, options in reversed(study.option_layers(m, d)):
                origins.update({f: at_of[layer][f] for f in options if f in at_of[layer]})
            for f in ("model", "dataset"):  # the entry's own name
                if f in at_of[f]:
                    origins[f] = at_of[f][f]
            for task in d.tasks or study.grid_tasks():
                try:
                    study.pair(m, d, task).config()
                except UsageError as e:
                    raise attributed(source, e, origins) from None


def study_config_toml(study: StudyConfig) -> str:
    """The grid file that reproduces ``study``: names where an entry has nothing of its own, else
    ``[[models]]`` / ``[[datasets]]`` tables; shared options that differ from their defaults."""
    top: list[tuple[str, Any]] = []
    tasks = study.grid_tasks()
    if study.tasks:
        top.append(("tasks", list(study.tasks)))
    elif tasks[0] is not None:
        top.append(("task", tasks[0]))
    if study.max_cost is not None:
        top.append(("max-cost", float(study.max_cost)))
    models, datasets = study.model_entries(), study.dataset_entries()
    dataset_key = key_of_field("dataset")
    plain_models = all(m.name is None and not m.options for m in models)
    plain_datasets = all(not d.tasks and not d.options for d in datasets)
    if plain_models:
        top.append(("models", [m.model for m in models]))
    if plain_datasets:
        top.append(("datasets", [dataset_key.to_file(d.dataset) for d in datasets]))
    lines = [STUDY_FILE_HEADER.rstrip("\n"), *toml_lines(top)]
    shared = _options_toml(study.run_options, skip_defaults=True)
    if shared:
        lines += ["", "[shared]", *shared]
    if not plain_models:
        for m in models:
            lines += ["", "[[models]]", f"model = {toml_value(m.model)}"]
            lines += [f"name = {toml_value(m.name)}"] if m.name is not None else []
            lines += _options_toml(m.options, skip_defaults=False)
    if not plain_datasets:
        for d in datasets:
            lines += ["", "[[datasets]]", f"dataset = {toml_value(dataset_key.to_file(d.dataset))}"]
            if d.tasks:
                lines += [f"task = {toml_value(d.tasks[0])}" if len(d.tasks) == 1
                          else f"tasks = {toml_value(list(d.tasks))}"]
            lines += _options_toml(d.options, skip_defaults=False)
    return "\n".join(lines) + "\n"


def _options_toml(options: Mapping[str, Any], *, skip_defaults: bool) -> list[str]:
    """``key = value`` lines for RunConfig fields, in RunConfig's order (never the API key)."""
    pairs = []
    for option in RUN_KEYS.values():
        if option.field not in options:
            continue
        value = options[option.field]
        if value is None or (skip_defaults and value == option.default):
            continue
        pairs.append((option.key, option.to_file(value)))
    return toml_lines(pairs)
