"""The resume state file: RNG states, counters and a checksum of the state itself.

The results file is the source of truth; this file only lets a resume restore the RNGs and its
counters without a full scan, so any doubt about it (truncated, not JSON, bad checksum, a newer
format, a malformed field) means "rebuild from the results", never a failed run. Used through
:class:`evalledger.ledger.RunLedger`.
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path
from typing import Any

from evalledger.fsio import canonical_json, utc_now

STATE_VERSION = 1


def build_resume_state(run_id: str, shard: tuple[int, int] | None, config_hash: str,
                       counters: dict[str, Any]) -> dict[str, Any]:
    """The state to write now: this process's RNG states, the counters, and the checksum."""
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "run_id": run_id,
        "shard": list(shard) if shard else None,
        "config_hash": config_hash,
        "counters": counters,
        "python_random_state": _encode_random_state(random.getstate()),
        "last_checkpoint": utc_now(),
    }
    np_state = _numpy_state()
    if np_state is not None:
        state["numpy_random_state"] = np_state
    state["sha256"] = _state_checksum(state)
    return state


def resume_state_problem(path: Path) -> dict[str, Any] | str:
    """The valid state in ``path``, or a description of what is wrong with it."""
    name = path.name
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return f"{name} is missing"
    except OSError as e:
        return f"{name} cannot be read ({e.strerror or e})"
    if not data.strip(b"\x00 \t\r\n"):
        return f"{name} is empty" + (" (only NUL bytes)" if data else "")
    try:
        state = json.loads(data)
    except ValueError as e:
        return f"{name} is not valid JSON, perhaps truncated ({e})"
    if not isinstance(state, dict):
        return f"{name} is not valid JSON (not an object)"
    version = state.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > STATE_VERSION:
        # A newer evalledger may have changed what the fields (and the checksum) mean: do
        # not trust it, even if it looks well-formed.
        return f"{name} was written by a newer evalledger (state version {version}; this one reads {STATE_VERSION})"
    if version != STATE_VERSION:
        return f"{name} has an unknown state version {version!r} (this evalledger reads {STATE_VERSION})"
    if state.get("sha256") != _state_checksum(state):
        return f"{name} fails its checksum"
    shape = _state_shape_problem(state)
    if shape:
        return f"{name} is malformed ({shape})"
    return state


def restore_random_state(state: dict[str, Any]) -> None:
    """Restore Python's (and numpy's, if recorded) global RNG from a resume state."""
    random.setstate(_decode_random_state(state["python_random_state"]))
    if "numpy_random_state" in state:
        _set_numpy_state(state["numpy_random_state"])


def _state_shape_problem(state: dict[str, Any]) -> str | None:
    """What makes a checksummed state unusable (a field of the wrong shape), or None.

    Checked so that restoring it can never crash the run: the checksum only proves the file is
    as written, not that whoever wrote it wrote what this version expects.
    """
    counters = state.get("counters")
    if not isinstance(counters, dict) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in counters.values()
    ):
        return "counters must map names to non-negative whole numbers"
    if not isinstance(state.get("config_hash"), str):
        return "config_hash must be a string"
    try:
        random.Random().setstate(_decode_random_state(state["python_random_state"]))
    except (KeyError, TypeError, ValueError, OverflowError):
        return "python_random_state is not a valid random state"
    np_state = state.get("numpy_random_state")
    if np_state is not None:
        ok = (
            isinstance(np_state, dict)
            and isinstance(np_state.get("name"), str)
            and isinstance(np_state.get("keys"), list)
            and len(np_state["keys"]) == 624
            and all(isinstance(k, int) and 0 <= k < 2**32 for k in np_state["keys"])
            and isinstance(np_state.get("pos"), int)
            and isinstance(np_state.get("has_gauss"), int)
            and isinstance(np_state.get("cached_gaussian"), (int, float))
        )
        if not ok:
            return "numpy_random_state is not a valid random state"
    return None


def _state_checksum(state: dict[str, Any]) -> str:
    body = {k: v for k, v in state.items() if k != "sha256"}
    return hashlib.sha256(canonical_json(body).encode()).hexdigest()


def _encode_random_state(st: tuple) -> list:
    version, internal, gauss = st
    return [version, list(internal), gauss]


def _decode_random_state(obj: list) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)


def _numpy_state() -> dict[str, Any] | None:
    np = sys.modules.get("numpy")  # only if the user's task imported it; never import it ourselves
    if np is None:
        return None
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": [int(k) for k in keys], "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_state(obj: dict[str, Any]) -> None:
    import numpy as np  # slow to import: only when a saved state holds numpy's generator

    np.random.set_state((obj["name"], np.array(obj["keys"], dtype=np.uint32), obj["pos"], obj["has_gauss"], obj["cached_gaussian"]))
