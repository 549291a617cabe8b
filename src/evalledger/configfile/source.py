"""Reading a TOML config file: its values, and the line of every key and array element.

tomllib gives positions only for syntax errors, but a message about a bad key or value must name
its line, so :func:`key_lines` walks the text once more (after tomllib has accepted it, so it may
assume valid TOML) and records where each key path starts. A path is a tuple of keys and array
indices: ``("shared", "concurrency")``, ``("models", 1, "base-url")`` for the second ``[[models]]``
table (or the second element of ``models = [...]``), ``("datasets", 0)`` for an element itself.
"""

from __future__ import annotations

import bisect
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from evalledger.errors import UsageError

KeyPath = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_ERROR_AT = re.compile(r"\s*\(at line (\d+), column \d+\)$")


@dataclass(frozen=True)
class TomlSource:
    """A parsed config file: ``data`` as tomllib reads it, ``lines`` the line of each key path."""

    path: Path  # as the user gave it: shown in messages, and the base of relative paths in the file
    data: dict[str, Any]
    lines: dict[KeyPath, int]

    @classmethod
    def read(cls, path: str | Path, *, flag: str = "--config") -> TomlSource:
        """Read and parse ``path``; :class:`UsageError` naming the file (and the line of a syntax error)."""
        p = Path(path)
        try:
            raw = p.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{flag} {p}: file not found") from None
        except IsADirectoryError:
            raise UsageError(f"{flag} {p}: is a directory, not a TOML file") from None
        except OSError as exc:
            raise UsageError(f"{flag} {p}: cannot read it ({exc.strerror or exc})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise UsageError(f"{p} line {line}: not valid UTF-8 (a TOML file must be UTF-8)") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            message = str(exc)
            at = _TOML_ERROR_AT.search(message)
            where = f"{p} line {at.group(1)}" if at else str(p)
            reason = message[: at.start()] if at else message
            raise UsageError(f"{where}: not valid TOML: {reason}") from None
        return cls(path=p, data=data, lines=key_lines(text))

    @property
    def base_dir(self) -> Path:
        """The directory relative paths in the file are resolved against."""
        return self.path.parent

    def where(self, at: KeyPath) -> str:
        """``<file> line N`` for the key path ``at`` (or its nearest enclosing path that has a line)."""
        for end in range(len(at), 0, -1):
            line = self.lines.get(at[:end])
            if line is not None:
                return f"{self.path} line {line}"
        return str(self.path)

    def error(self, at: KeyPath, message: str) -> UsageError:
        """A :class:`UsageError` that names the file and the line of ``at``."""
        return UsageError(f"{self.where(at)}: {message}")


def key_lines(text: str) -> dict[KeyPath, int]:
    """The 1-based line on which each key path of a valid TOML document starts."""
    scanner = _Scanner(text)
    scanner.document()
    return scanner.found


class _Scanner:
    """Walks valid TOML text, recording the line of each key, table header and array element."""

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.newlines = [m.start() for m in re.finditer("\n", text)]
        self.found: dict[KeyPath, int] = {}
        self.table_arrays: dict[KeyPath, int] = {}  # a [[table]]'s path → index of its latest element

    # --- positions -------------------------------------------------------------------------------

    def line(self) -> int:
        return bisect.bisect_left(self.newlines, self.i) + 1

    def eof(self) -> bool:
        return self.i >= len(self.s)

    def peek(self, n: int = 1) -> str:
        return self.s[self.i:self.i + n]

    def skip_blank(self, *, newlines: bool) -> None:
        """Skip spaces and tabs, comments, and (with ``newlines``) line ends."""
        while not self.eof():
            c = self.s[self.i]
            if c in " \t" or (newlines and c in "\r\n"):
                self.i += 1
            elif c == "#":
                end = self.s.find("\n", self.i)
                self.i = len(self.s) if end < 0 else end
            else:
                return

    # --- structure -------------------------------------------------------------------------------

    def document(self) -> None:
        table: KeyPath = ()
        while True:
            self.skip_blank(newlines=True)
            if self.eof():
                return
            line = self.line()
            if self.peek(2) == "[[":
                self.i += 2
                raw = self.key()
                self.skip_blank(newlines=False)
                self.i += 2  # ]]
                path = self.resolve(raw)
                index = self.table_arrays.get(path, -1) + 1
                self.table_arrays[path] = index
                self.found.setdefault(path, line)
                table = (*path, index)
                self.found[table] = line
            elif self.peek() == "[":
                self.i += 1
                table = self.resolve(self.key())
                self.skip_blank(newlines=False)
                self.i += 1  # ]
                self.found.setdefault(table, line)
            else:
                self.key_value(table)

    def resolve(self, raw: KeyPath) -> KeyPath:
        """A header's keys with the current index of each array of tables it passes through."""
        out: KeyPath = ()
        for k, segment in enumerate(raw):
            out = (*out, segment)
            if out in self.table_arrays and k < len(raw) - 1:
                out = (*out, self.table_arrays[out])
        return out

    def key_value(self, table: KeyPath) -> None:
        line = self.line()
        path = (*table, *self.key())
        self.skip_blank(newlines=False)
        self.i += 1  # =
        self.skip_blank(newlines=False)
        self.found.setdefault(path, line)
        self.value(path)

    def key(self) -> KeyPath:
        """A dotted key: bare or quoted segments separated by dots."""
        parts: list[str] = []
        while True:
            self.skip_blank(newlines=False)
            c = self.peek()
            if c in "\"'":
                start = self.i
                self.string()
                parts.append(tomllib.loads(f"k = {self.s[start:self.i]}")["k"])
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if m is None:
                    raise ValueError(f"key expected at offset {self.i}")
                parts.append(m.group(0))
                self.i = m.end()
            self.skip_blank(newlines=False)
            if self.peek() != ".":
                return tuple(parts)
            self.i += 1

    def value(self, path: KeyPath) -> None:
        c = self.peek()
        if c in "\"'":
            self.string()
        elif c == "[":
            self.array(path)
        elif c == "{":
            self.inline_table(path)
        else:  # a number, a boolean, a date: up to the next delimiter
            while not self.eof() and self.s[self.i] not in ",]}#\r\n":
                self.i += 1

    def array(self, path: KeyPath) -> None:
        self.i += 1  # [
        index = 0
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "]":
                self.i += 1
                return
            self.found.setdefault((*path, index), self.line())
            self.value((*path, index))
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.i += 1
                index += 1

    def inline_table(self, path: KeyPath) -> None:
        self.i += 1  # {
        while True:
            self.skip_blank(newlines=True)
            if self.peek() == "}":
                self.i += 1
                return
            self.key_value(path)
            self.skip_blank(newlines=True)
            if self.peek() == ",":
                self.i += 1

    def string(self) -> None:
        s = self.s
        quote = s[self.i]
        if s.startswith(quote * 3, self.i):
            end = self.i + 3
            while True:
                if quote == '"' and s[end] == "\\":
                    end += 2
                    continue
                if s.startswith(quote * 3, end):
                    end += 3
                    # up to two quotes of the content may sit right before the closing delimiter
                    extra = 0
                    while extra < 2 and end < len(s) and s[end] == quote:
                        end += 1
                        extra += 1
                    self.i = end
                    return
                end += 1
        end = self.i + 1
        while s[end] != quote:
            end += 2 if quote == '"' and s[end] == "\\" else 1
        self.i = end + 1
