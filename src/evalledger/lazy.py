"""Names whose modules are imported on first use: the public faces of the parts and the CLI's commands.

A part's ``__init__`` is its public face, and every ``import evalledger.<anything>`` runs the root
``__init__`` first: were the faces to import all their modules, and the CLI every command,
``evalledger run`` would load every part (the HTML report, paired comparisons, Slurm scripts, merge,
the study grid) before sending its first request, about a third of evalledger's own import time
(``benchmarks/bench_startup.py``). A face built with :func:`lazy_exports` names each of its modules
with the names it exports, and a module is imported when one of its names is first asked for
(``from evalledger.readers import get_stats`` imports ``evalledger.readers.api`` and what that
needs, nothing else).

A lazy face keeps the same imports under ``if TYPE_CHECKING:``, for type checkers and for the
import-linter contracts (which count them); ``tests/test_startup.py`` checks that they agree.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from typing import Any


class LazyNames(MutableMapping[str, Any]):
    """Names bound to ``(module, attribute)``: looking a name up imports its module (once) and
    returns the attribute. Names may also be bound to objects directly."""

    def __init__(self, where: Mapping[str, tuple[str, str]]) -> None:
        self.where = dict(where)
        self.loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.loaded:
            module, attribute = self.where[name]
            # imported on first use, not when the face is: start-up time (see the module's docstring)
            self.loaded[name] = getattr(importlib.import_module(module), attribute)
        return self.loaded[name]

    def __setitem__(self, name: str, value: Any) -> None:
        self.where.pop(name, None)
        self.loaded[name] = value

    def __delitem__(self, name: str) -> None:
        if name not in self.where and name not in self.loaded:
            raise KeyError(name)
        self.where.pop(name, None)
        self.loaded.pop(name, None)

    def __iter__(self) -> Iterator[str]:
        return iter({**self.where, **self.loaded})

    def __len__(self) -> int:
        return len(self.where.keys() | self.loaded.keys())


def lazy_exports(package: str, names: Iterable[str], exports: Mapping[str, Iterable[str]]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for the face of ``package``, which exports ``names`` (its
    ``__all__``): from each module of ``exports`` (full names), the names listed with it. A name is
    looked up in its module on first use (importing the module), then kept in the package's namespace.

    Raises ValueError at import when ``names`` and ``exports`` (with what the face imported itself)
    do not list the same names.
    """
    table = LazyNames({name: (module, name) for module, listed in exports.items() for name in listed})
    namespace = sys.modules[package].__dict__
    eager = set(names) & set(namespace)  # imported by the face itself (e.g. __version__)
    differ = (set(names) - eager) ^ set(table)
    if differ:
        raise ValueError(f"{package}: __all__ and the names exported on first use differ: {sorted(differ)}")

    def __getattr__(name: str) -> Any:
        try:
            value = table[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        namespace[name] = value  # found: later lookups do not come here
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__


__all__ = ["LazyNames", "lazy_exports"]
