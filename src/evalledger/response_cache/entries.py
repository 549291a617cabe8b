"""What one response-cache entry is: its key, where it lives, and its bytes (written and checked).

An entry is one small JSON file at ``<cache dir>/v1/<key[0:2]>/<key[2:4]>/<key>.json`` holding

``format`` (:data:`ENTRY_FORMAT`), ``key`` (the 64 hex digits of :func:`request_key`), ``created_ms``
(when it was stored, Unix milliseconds), ``model`` and ``endpoint`` (for ``cache stats``), ``epoch``,
``answer`` (:class:`CachedAnswer`: the reply's text, usage, request id, finish reason and the model
that served it; only what a record uses, never a failed answer) and ``sha256``, the checksum of the
canonical JSON of every other field. :func:`decode_entry` trusts an entry only if it parses, has
this format, carries the key it was looked up by, and its checksum and field types hold; anything
else (a torn write, a disk error, a hand edit, another version) is a miss.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from evalledger.fsio import canonical_json, user_cache_home

#: The version of the key and of the entry layout; a change gets a new directory and a new format.
KEY_VERSION = 1
ENTRY_FORMAT = "evalledger-response/1"
ENTRY_DIR = "v1"
ENTRY_SUFFIX = ".json"
#: ``EVALLEDGER_CACHE_DIR`` names the cache directory (``--cache-dir`` wins over it).
CACHE_DIR_VARIABLE = "EVALLEDGER_CACHE_DIR"
_HEX = frozenset("0123456789abcdef")


def default_cache_dir() -> Path:
    """``$EVALLEDGER_CACHE_DIR``, else ``$XDG_CACHE_HOME/evalledger/responses`` (an absolute
    ``XDG_CACHE_HOME`` only, as the XDG spec says), else ``~/.cache/evalledger/responses``."""
    explicit = os.environ.get(CACHE_DIR_VARIABLE, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    return user_cache_home() / "evalledger" / "responses"


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The cache directory a run or a command uses: ``cache_dir`` (``--cache-dir``) or the default."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _sha256(text: str) -> str:
    # surrogatepass: a lone surrogate in a dataset's text must give a key, not an exception
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def request_key(*, endpoint: str, epoch: int, request: Mapping[str, Any]) -> str:
    """The key of one model call: sha256 of the canonical JSON of everything that determines its
    answer. ``request`` is the request body as the run sends it (the ``--model`` string, which names
    the provider, the messages and every generation parameter, the seed included); ``endpoint`` the
    URL it goes to; ``epoch`` which repeat of the sample asks it, so the K repeats of a sample are K
    entries even where the provider takes no seed."""
    return _sha256(canonical_json({"v": KEY_VERSION, "endpoint": endpoint, "epoch": epoch, "request": request}))


def is_key(text: str) -> bool:
    """Whether ``text`` is a key as :func:`request_key` makes them (64 lower-case hex digits)."""
    return len(text) == 64 and set(text) <= _HEX


def entry_path(root: Path, key: str) -> Path:
    """Where the entry of ``key`` lives under the cache directory ``root``: two levels of 256
    directories, so no directory holds more than a few entries of even a large cache."""
    return root / ENTRY_DIR / key[:2] / key[2:4] / f"{key}{ENTRY_SUFFIX}"


@dataclass(frozen=True)
class CachedAnswer:
    """The parts of a model's reply that a record uses, as the cache stores them."""

    text: str
    input_tokens: int
    output_tokens: int
    request_id: str | None = None
    finish_reason: str | None = None
    served_model: str | None = None


@dataclass(frozen=True)
class Entry:
    """A checked entry: its answer and the facts ``cache stats`` shows."""

    key: str
    created_ms: int
    model: str
    endpoint: str
    epoch: int
    answer: CachedAnswer


def encode_entry(key: str, *, created_ms: int, model: str, endpoint: str, epoch: int, answer: CachedAnswer) -> bytes:
    """The bytes of an entry file: one line of ASCII JSON with its checksum."""
    body: dict[str, Any] = {"format": ENTRY_FORMAT, "key": key, "created_ms": created_ms, "model": model,
                            "endpoint": endpoint, "epoch": epoch, "answer": asdict(answer)}
    body["sha256"] = _sha256(canonical_json(body))
    return (json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def _is_count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 1 << 63


def _optional_text(value: Any) -> bool:
    return value is None or type(value) is str


def decode_entry(data: bytes, key: str | None) -> Entry | str:
    """The entry in ``data`` if it can be trusted for ``key`` (None: any key, as ``cache stats``
    reads them), else why not (a short phrase)."""
    try:
        body = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return "not JSON (a torn or damaged file)"
    if type(body) is not dict or body.get("format") != ENTRY_FORMAT:
        return "not an entry of this format"
    checksum = body.pop("sha256", None)
    if type(checksum) is not str or checksum != _sha256(canonical_json(body)):
        return "wrong checksum"
    found = body.get("key")
    if type(found) is not str or not is_key(found) or (key is not None and found != key):
        return "holds another key"
    answer = body.get("answer")
    if type(answer) is not dict or set(answer) != {f for f in CachedAnswer.__dataclass_fields__}:
        return "malformed answer"
    if not (type(answer["text"]) is str and _is_count(answer["input_tokens"]) and _is_count(answer["output_tokens"])
            and all(_optional_text(answer[f]) for f in ("request_id", "finish_reason", "served_model"))):
        return "malformed answer"
    created, model, endpoint, epoch = (body.get(f) for f in ("created_ms", "model", "endpoint", "epoch"))
    if not (_is_count(created) and type(model) is str and type(endpoint) is str and _is_count(epoch)):
        return "malformed fields"
    return Entry(key=found, created_ms=created, model=model, endpoint=endpoint, epoch=epoch,
                 answer=CachedAnswer(**answer))
