"""The run options a config file may hold: one key per ``evalledger run`` flag, named as its long
flag (``max-tokens``; ``max_tokens`` is accepted too) and typed as the flag is.

The keys come from :class:`RunConfig`'s fields (every field is a flag of ``run``; the CLI's test
checks that the two agree), so a new field is a new key without a second list to keep.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import typing
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalledger.config import RunConfig
from evalledger.configfile.emit import toml_value
from evalledger.configfile.source import KeyPath, TomlSource
from evalledger.datasets import BUILTIN_DATASETS, parse_shard
from evalledger.errors import UsageError

# The one field whose flag is not its own name (``--prices FILE``).
_KEY_OF_FIELD = {"prices_file": "prices"}
# A secret never goes into a file: ``api-key-env`` names the variable that holds it.
_NOT_IN_FILES = frozenset({"api_key"})
_SECRET_MESSAGE = ("an API key never goes in a config file: put it in an environment variable and name the "
                   "variable with api-key-env")
# Fields naming a file or directory: a relative path in a config file is read from the file's directory.
_PATH_FIELDS = frozenset({"dataset", "review_prompt", "fewshot_from", "prices_file", "output_dir", "cache_dir"})
# Fields whose value may also be a built-in dataset's name, which is not a path.
_DATASET_FIELDS = frozenset({"dataset", "fewshot_from"})

_EXPECTED = {
    "boolean": "true or false",
    "integer": "a whole number",
    "number": "a number",
    "string": "a string",
    "path": "a path (a string)",
    "shard": 'a string K/N such as "2/4"',
}


@dataclass(frozen=True)
class OptionKey:
    """One key: the :class:`RunConfig` field it sets, its name in files, its kind and its default."""

    field: str
    key: str
    kind: str  # boolean | integer | number | string | path | shard
    default: Any

    @property
    def flag(self) -> str:
        """The flag as ``--help`` shows it: a switch that is on by default has its ``--no-`` form."""
        return f"--{self.key}/--no-{self.key}" if self.kind == "boolean" and self.default else f"--{self.key}"

    def parse(self, value: Any, base_dir: Path) -> Any:
        """The field's value from the file's ``value``; ValueError saying what was expected."""
        expected = f"expected {_EXPECTED[self.kind]} (as {self.flag} takes)"
        if self.kind == "boolean":
            if not isinstance(value, bool):
                raise ValueError(expected)
            return value
        if self.kind == "integer":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(expected)
            return value
        if self.kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(expected)
            return float(value)
        if not isinstance(value, str):
            raise ValueError(expected)
        if self.kind == "shard":
            try:
                return parse_shard(value)
            except UsageError as e:
                raise ValueError(e.message) from None
        if self.kind == "path":
            if not value.strip():
                raise ValueError(f"expected a path, not an empty string (as {self.flag} takes)")
            return file_path(self.field, value, base_dir)
        return value

    def to_file(self, value: Any) -> Any:
        """The value as a file holds it: paths absolute (so the file means the same wherever it is
        saved), a shard as ``"K/N"``."""
        if self.kind == "shard":
            return f"{value[0]}/{value[1]}"
        if self.kind == "path":
            text = os.fspath(value)
            if _kept_as_is(self.field, text):
                return text
            return os.path.abspath(text)
        return value


def file_path(field: str, value: str, base_dir: Path) -> Any:
    """A path from a config file: relative to the file's directory (a built-in dataset name, an
    absolute path and ``~/…`` are kept as they are)."""
    resolved = value if _kept_as_is(field, value) else os.fspath(base_dir / value)
    return Path(resolved) if field == "output_dir" else resolved


def _kept_as_is(field: str, text: str) -> bool:
    return ((field in _DATASET_FIELDS and text in BUILTIN_DATASETS) or text.startswith("~")
            or os.path.isabs(text))


def _kind(field: str, hint: Any) -> str:
    if field in _PATH_FIELDS:
        return "path"
    args = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
    base = args[0]
    if typing.get_origin(base) is tuple:
        return "shard"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}[base]


def _option_keys() -> dict[str, OptionKey]:
    hints = typing.get_type_hints(RunConfig)
    keys = {}
    for f in dataclasses.fields(RunConfig):
        if f.name in _NOT_IN_FILES:
            continue
        default = None if f.default is dataclasses.MISSING else f.default
        key = _KEY_OF_FIELD.get(f.name, f.name.replace("_", "-"))
        keys[key] = OptionKey(field=f.name, key=key, kind=_kind(f.name, hints[f.name]), default=default)
    return keys


#: Every run option a file may set, by key, in RunConfig's field order.
RUN_KEYS: dict[str, OptionKey] = _option_keys()
_BY_FIELD = {k.field: k for k in RUN_KEYS.values()}


def normal_key(name: str) -> str:
    """``max_tokens`` → ``max-tokens``: both spellings name one key."""
    return name.replace("_", "-")


def key_of_field(field: str) -> OptionKey:
    """The key that sets a RunConfig field."""
    return _BY_FIELD[field]


def unknown_key(key: str, allowed: Collection[str]) -> str:
    """The message for a key that is not allowed here: a close match, then every key that is."""
    close = difflib.get_close_matches(normal_key(key), list(allowed), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key {key!r}{hint}; the keys here are: {', '.join(sorted(allowed))}"


def shown(value: Any) -> str:
    """A value as the file wrote it, for messages."""
    try:
        return toml_value(value)
    except TypeError:
        return repr(value)


def read_options(source: TomlSource, table: Mapping[str, Any], at: KeyPath, *,
                 own: Collection[str] = (), refused: Mapping[str, str] | None = None,
                 ) -> tuple[dict[str, Any], dict[str, KeyPath]]:
    """The run options of one table of the file: ``({field: value}, {field: its key path})``.

    ``own``: the other keys the caller reads from this table (skipped here, listed as allowed).
    ``refused``: run options that may not be set in this table, by field, with the reason.
    Raises :class:`UsageError` naming the file and line for an unknown key, a key given twice
    (``max-tokens`` and ``max_tokens``) or a value of the wrong type.
    """
    refused = refused or {}
    own_keys = {normal_key(k) for k in own}
    allowed = own_keys | {k for k, o in RUN_KEYS.items() if o.field not in refused}
    values: dict[str, Any] = {}
    origins: dict[str, KeyPath] = {}
    spelled: dict[str, str] = {}
    for key, value in table.items():
        path = (*at, key)
        name = normal_key(key)
        if name in spelled:
            raise source.error(path, f"{name!r} is given twice (as {spelled[name]!r} and {key!r})")
        spelled[name] = key
        if name in own_keys:
            continue
        option = RUN_KEYS.get(name)
        if option is not None and option.field in refused:
            raise source.error(path, f"{key!r} cannot be set here: {refused[option.field]}")
        if option is None:
            raise source.error(path, _SECRET_MESSAGE if name == "api-key" else unknown_key(key, allowed))
        try:
            values[option.field] = option.parse(value, source.base_dir)
        except ValueError as e:
            raise source.error(path, f"{key} = {shown(value)}: {e}") from None
        origins[option.field] = path
    return values, origins


_FLAG_AT_START = re.compile(r"--([a-z][a-z-]*)")


def attributed(source: TomlSource, error: UsageError, origins: Mapping[str, KeyPath]) -> UsageError:
    """RunConfig's message for a bad value (it starts with the flag), located at the key in the
    file that set it; a value that came from elsewhere (a command-line flag) keeps its message."""
    m = _FLAG_AT_START.match(error.message)
    option = RUN_KEYS.get(m.group(1)) if m else None
    if option is not None and option.field in origins:
        return source.error(origins[option.field], error.message)
    if option is None:
        return UsageError(f"{source.path}: {error.message}")
    return error


def build_run_config(source: TomlSource, fields: Mapping[str, Any], origins: Mapping[str, KeyPath]) -> RunConfig:
    """``RunConfig(**fields)``, its complaint about a value located in the file."""
    try:
        return RunConfig(**fields)
    except UsageError as e:
        raise attributed(source, e, origins) from None
