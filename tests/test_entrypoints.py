"""``python -m evalledger``: every registered command answers ``--help``, and ``--version`` is the package's.

The commands are read from the click group, so a new command is covered without touching this file;
a command defined in ``evalledger.cli`` but never registered on the group fails
:func:`test_every_defined_command_is_registered`.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

import evalledger.cli
from evalledger._version import __version__
from evalledger.cli import cli


def _command_paths(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command under ``group`` as its words on the command line (subgroups included, recursively)."""
    paths = []
    for name, command in sorted(group.commands.items()):
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths.extend(_command_paths(command, (*prefix, name)))
    return paths


def _command_at(path: tuple[str, ...]) -> click.Command:
    command: click.Command = cli
    for word in path:
        assert isinstance(command, click.Group)
        command = command.commands[word]
    return command


def _python_m(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evalledger", *args], check=False, cwd=cwd, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("path", _command_paths(cli), ids=" ".join)
def test_python_m_command_help(path: tuple[str, ...], tmp_path: Path) -> None:
    proc = _python_m(*path, "--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"Usage: python -m evalledger {' '.join(path)} "), proc.stdout
    command = _command_at(path)
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            for opt in (*param.opts, *param.secondary_opts):
                assert opt in proc.stdout, f"{opt} missing from `{' '.join(path)} --help`"


def test_python_m_version(tmp_path: Path) -> None:
    proc = _python_m("--version", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"evalledger, version {__version__}"


def test_every_defined_command_is_registered() -> None:
    registered, groups = set(), [cli]
    while groups:  # the commands of the group and of its groups (`cache stats`)
        for command in groups.pop().commands.values():
            registered.add(id(command))
            groups += [command] if isinstance(command, click.Group) else []
    defined = []
    for info in pkgutil.iter_modules(evalledger.cli.__path__):
        module = importlib.import_module(f"evalledger.cli.{info.name}")
        defined += [
            f"{module.__name__}.{attr}"
            for attr, value in vars(module).items()
            if isinstance(value, click.Command) and value.callback is not None
            and value.callback.__module__ == module.__name__ and id(value) not in registered
        ]
    assert not defined, f"defined but not registered on the group in evalledger/cli/__init__.py: {defined}"
    assert "study" in cli.commands
