"""What a resumed writer takes from its resume state: the counters and the global RNG.

The state file (:mod:`evalledger.ledger.state`) is used only when it was written for this very
config; otherwise the RNG is seeded from the run seed and the counters are rebuilt from the
writer's own results file, the source of truth.
"""

from __future__ import annotations

import logging
import random

from evalledger.ledger import FileCounts, RunLedger

log = logging.getLogger(__name__)

#: Counters kept in the resume state (rebuilt from the results file when the state is not trusted).
COUNTERS = ("ok_records", "error_records", "requests")


def restore_counters(ledger: RunLedger, config_hash: str, seed: int, own: FileCounts) -> dict[str, int]:
    """The counters (and, as a side effect, the global RNG) from the resume state if it was written
    for ``config_hash``, else rebuilt: the RNG from ``seed``, the counters from ``own``, what the
    ledger scan counted in this writer's results file."""
    state_doc, problem = ledger.read_resume_state()
    results = ledger.results_path
    if state_doc is not None and state_doc.get("config_hash") == config_hash:
        ledger.restore_random_state(state_doc)
        return {k: int(state_doc.get("counters", {}).get(k, 0)) for k in COUNTERS}
    if problem and results.exists() and results.stat().st_size > 0:
        log.warning(f"{problem}; rebuilding the resume state from the results file")
    random.seed(seed)
    return {"ok_records": own.ok_records, "error_records": own.error_records, "requests": own.requests}


__all__ = ["COUNTERS", "restore_counters"]
