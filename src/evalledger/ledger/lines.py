"""Read a results file for what resuming needs, without parsing every record in full.

Resuming a run needs, per record, only its sample id and epoch, status, attempts, ``correct`` and the
token and cost counts; a full ``orjson.loads`` of a ~1 kB record (prompt, response, timestamps) costs
~4 µs, i.e. 4 s on a million records. Our writer (:func:`evalledger.ledger.encode_lines`) puts
those fields first, in a fixed order and format, so a line it wrote starts with a prefix one
regular expression can read, on a whole ~8 MB block of lines at a time.

When is the prefix trusted instead of a full parse? Only for a block in which *every* line starts
with that exact prefix, and which holds no NUL byte (a power loss leaves NULs) and decodes as
UTF-8. Any other block is read line by line with
:func:`~evalledger.ledger.parse_record_line`, the one rule every reader uses, so garbage, torn
lines and hostile records are found and skipped exactly as a full parse would, at its speed. The prefix's
``sample_id`` and ``status`` are the record's own: they open the top-level object, and our writer
never writes a key twice. The bill read from a prefix is :func:`evalledger.records.bill_of` of the
record, whatever the values (a block with a line whose prefix has no ``paid`` is also checked for a
``paid`` further on, which bill_of would bill instead); only a line that repeats a key of the bill
after its prefix, which JSON leaves undefined and no writer of ours produces, is billed by the first.
The same holds for ``epoch``: a line whose prefix has none is epoch 1 (records written before
repeats, other tools'), unless its block holds an ``"epoch":`` key further on, which sends the
block to the full parse (:func:`evalledger.records.epoch_of` reads a top-level ``epoch`` anywhere).

What the fast path does not see is damage *after* a well-formed prefix that leaves the line's
newline in place (a hand edit, bit rot, a lone ``\\ud800`` escape in a response): such a line is
read by its prefix, where a full parse would skip it. Checking for that would cost a second scan of
every byte (~1 µs a record here, a third of the pass); crashes cannot produce it (a torn write has
no newline of its own, and the next writer moves it aside before appending).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from evalledger.ledger.files import parse_record_line
from evalledger.records import LEAD_KEYS, TOKEN_FIELDS, UNIT_SEPARATOR

# JSON as our writer writes it. A whole number up to 19 digits (no leading zero, which JSON
# forbids): so every token count read here is below records.COUNT_LIMIT and read alike by every
# parser; a longer one sends its block to the full parse. [0-9], not \d: in a str pattern \d also
# takes other scripts' digits, and is slower.
_INT = r"(?:0|[1-9][0-9]{0,18})"
_NUM = r"(null|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?)"
_SID, _EPOCH, _STATUS, _ATTEMPTS, _CORRECT, _USAGE, _COST, _PAID = LEAD_KEYS
_OPTIONAL = (_EPOCH, _PAID)  # lead keys a line may lack (records older than them, other tools')
_VALUES = {  # each lead key's value as our writer writes it
    _SID: r'"([^"\\\n]*)"',
    _EPOCH: f"({_INT})",
    _STATUS: r'"(ok|error)"',
    _ATTEMPTS: f"({_INT})",
    _CORRECT: r"(true|false|null)",
    _USAGE: r"\{" + ",".join(f'"{name}":({_INT})' for name in TOKEN_FIELDS) + r"\}",
    _COST: _NUM,
}
_PAID_VALUE = r"\{" + ",".join(f'"{name}":{_INT}' for name in TOKEN_FIELDS) + f',"{_COST}":{_NUM}' + r"\}"
_VALUES[_PAID] = _PAID_VALUE


def _lead(key: str) -> str:
    """The pattern of one lead key after the first. ``epoch`` and ``paid`` may be absent; one of
    another shape must not be mistaken for an absent one, hence the look-ahead."""
    pattern = f',"{key}":{_VALUES[key]}'
    return f'(?:{pattern}|(?!,"{key}":))' if key in _OPTIONAL else pattern


PREFIX_RE = re.compile(r"\n\{" + f'"{_SID}":{_VALUES[_SID]}' + "".join(map(_lead, LEAD_KEYS[1:])) + "[,}]")
"""One line's prefix as our writer makes it. Groups: sample id, epoch (``""`` without ``epoch``),
status, attempts, correct, usage input and output tokens, cost, paid cost (``""`` without
``paid``; ``null`` when unpriced)."""

#: Where each optional lead key's value is in a :data:`Prefix`, and the key as it opens a value.
_OPTIONAL_GROUPS = ((1, f'"{_EPOCH}":'), (8, f'"{_PAID}":'))
#: The ``epoch`` values of a prefix that mean epoch 1 (absent, or not >= 1: ``records.epoch_of``).
EPOCH_ONE = frozenset(("", "0", "1"))

BLOCK_BYTES = 8 << 20

Prefix = tuple[str, str, str, str, str, str, str, str, str]


@dataclass
class Block:
    """The complete lines of one block of a file, read the fast way or the slow way (never both).

    ``prefixes``: the regex groups of every line (fast path). ``records``: the full record of every
    line that is one (slow path). ``garbage``: 1-based line numbers of complete lines that are not
    records. Lines are in file order within each list.
    """

    first_line: int
    lines: int
    nbytes: int = 0  # the block's size in bytes (set by iter_blocks)
    prefixes: list[Prefix] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    garbage: list[int] = field(default_factory=list)


def iter_blocks(path: Path, tail: list[int] | None = None, block_bytes: int = BLOCK_BYTES,
                start: int = 0) -> Iterator[Block]:
    """Every complete line of ``path``, in blocks. A last line without its newline is left out (it
    is being written right now, or torn); its length is appended to ``tail`` if given.

    ``start``: begin at this byte offset, which must be the start of a line (line numbers then count
    from there). A missing file yields nothing.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    line_no = 1
    carry = b""
    with f:
        if start:
            f.seek(start)
        while True:
            data = f.read(block_bytes)
            if not data:
                break
            data = carry + data if carry else data
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                carry = data  # no newline yet: a very long line, keep reading
                continue
            carry = data[cut:]
            block = read_block(data[:cut] if cut < len(data) else data, line_no)
            block.nbytes = cut
            line_no += block.lines
            yield block
    if carry and tail is not None:
        tail.append(len(carry))


def read_block(data: bytes, first_line: int) -> Block:
    """Classify the complete, newline-terminated lines in ``data`` (see the module docstring)."""
    n = data.count(b"\n")
    block = Block(first_line, n)
    if b"\x00" not in data:
        try:
            # ASCII (the usual case) decodes as Latin-1 with a plain copy; else UTF-8 validates it.
            text = "\n" + (data.decode("latin-1") if data.isascii() else data.decode("utf-8"))
        except UnicodeDecodeError:
            text = ""
        # The pattern starts with "\n" and never crosses one, so each match is one line's start,
        # and n matches means every line has the prefix.
        prefixes = PREFIX_RE.findall(text)
        if len(prefixes) == n and _no_lead_key_after_the_prefix(text, prefixes):
            block.prefixes = prefixes
            return block

    number = first_line
    # split on b"\n" only, as ``for line in file`` does (splitlines would also cut at b"\r")
    for raw in data[:-1].split(b"\n"):
        rec = parse_record_line(raw)
        if rec is None:
            block.garbage.append(number)
        else:
            block.records.append(rec)
        number += 1
    return block


def _no_lead_key_after_the_prefix(text: str, prefixes: list[Prefix]) -> bool:
    """Whether no line whose prefix lacks ``paid`` (or ``epoch``) holds one further on (bill_of
    would bill it; epoch_of would read it). (A string cannot hold the key ``"paid":``: its closing
    quote would be escaped.) Costs one scan of the block per such key, and only when some line
    lacks it (records older than ``paid`` or ``epoch``)."""
    for group, key in _OPTIONAL_GROUPS:
        with_key = len(prefixes) - [p[group] for p in prefixes].count("")
        if with_key != len(prefixes) and text.count(key) != with_key:
            return False
    return True


def prefix_unit_keys(prefixes: list[Prefix]) -> list[str]:
    """The unit key (:func:`evalledger.records.unit_key`) of each prefix, in C-level loops: the bare
    id of every line when the block holds only epoch 1 (every run without repeats)."""
    if EPOCH_ONE.issuperset([p[1] for p in prefixes]):
        return [p[0] for p in prefixes]
    return [p[0] if p[1] in EPOCH_ONE else p[0] + UNIT_SEPARATOR + p[1] for p in prefixes]


def lead_first(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with :data:`LEAD_KEYS` first (those it has), the rest in their own order."""
    lead = {k: record[k] for k in LEAD_KEYS if k in record}
    return {**lead, **record}
