"""A run's config file: every ``evalledger run`` option as a TOML key (``evalledger run --config``),
and the file that reproduces a RunConfig (``--print-config``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from evalledger.config import RunConfig
from evalledger.configfile.emit import toml_lines
from evalledger.configfile.keys import RUN_KEYS, build_run_config, read_options
from evalledger.configfile.source import TomlSource

RUN_FILE_HEADER = (
    "# evalledger run config: `evalledger run --config FILE` runs this experiment (the same run ID);\n"
    "# flags given beside --config override the file. Keys are run's long flag names; relative paths\n"
    "# are read from this file's directory.\n"
)


def load_run_config(path: str | Path, **overrides: Any) -> RunConfig:
    """The :class:`RunConfig` a TOML config file describes, with ``overrides`` (RunConfig fields,
    as ``RunConfig`` takes them: ``shard=(2, 4)``) over the file's values.

    Keys are ``evalledger run``'s long flag names (``max-tokens = 256``; ``max_tokens`` too),
    typed as the flag is (``shard = "2/4"``; ``true``/``false`` for ``overwrite``, ``resume``, …).
    Relative paths in the file (dataset, review-prompt, fewshot-from, prices, output-dir) are read
    from the file's directory; a built-in dataset name stays a name. An unknown key, a value of
    the wrong type or a bad value raises :class:`UsageError` naming the file, the line and what
    is allowed.
    """
    source = TomlSource.read(path)
    values, origins = read_options(source, source.data, ())
    fields = {**values, **overrides}
    if fields.get("dataset") is None:
        raise source.error((), 'no dataset: add dataset = "…" (a built-in name or a file) or pass --dataset')
    return build_run_config(source, fields, {f: at for f, at in origins.items() if f not in overrides})


def run_config_toml(config: RunConfig) -> str:
    """The config file that reproduces ``config``: its dataset and model, and every option that
    differs from its default (never the API key itself; ``api-key-env`` names its variable)."""
    pairs = []
    for option in RUN_KEYS.values():
        value = getattr(config, option.field)
        if value is None or (option.field not in ("dataset", "model") and value == option.default):
            continue
        pairs.append((option.key, option.to_file(value)))
    return RUN_FILE_HEADER + "\n".join(toml_lines(pairs)) + "\n"
