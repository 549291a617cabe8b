"""Projected tokens and cost for pending units of work, and the ``--max-cost`` budget.

A unit is one ask of a sample ((sample, epoch), see :mod:`evalledger.run.units`); without repeats
it is a sample. The projection uses prompt lengths (about four characters a token) and
``max_tokens`` until the run has finished units; then it uses their observed average tokens per
unit instead.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from dataclasses import dataclass

from evalledger.pricing import Price
from evalledger.run.limits import estimate_prompt_tokens
from evalledger.samples import Sample
from evalledger.tasks import Task

_PROMPT_SAMPLE = 500  # samples whose prompts are measured; the rest are extrapolated


@dataclass(frozen=True)
class Estimate:
    """What the pending units will cost, projected (``pending`` units: samples × their epochs)."""

    pending: int
    input_tokens: int
    output_tokens: int
    cost_usd: float | None  # None: no known price for the model
    per_sample_cost: float | None  # per unit
    basis: str
    epochs: int = 1  # --epochs: each sample is asked this many times

    def line(self) -> str:
        """One human-readable pre-flight line."""
        cost = "unknown (no price for this model; see --prices)" if self.cost_usd is None else f"~${self.cost_usd:,.4f}"
        what = "samples" if self.epochs == 1 else f"(sample, epoch) units ({self.epochs} epochs)"
        return (f"estimate: {self.pending} pending {what}, ~{self.input_tokens:,} input + ~{self.output_tokens:,} "
                f"output tokens, cost {cost} ({self.basis})")


def estimate_pending(task: Task, pending: Sequence[Sample], max_tokens: int, price: Price | None,
                     observed: tuple[int, int, int] = (0, 0, 0), *, units: int | None = None,
                     epochs: int = 1) -> Estimate:
    """Project tokens and cost for ``units`` pending units (default: one per sample of ``pending``,
    whose prompts are measured): observed averages when there are any, else prompt + max_tokens."""
    calls = max(1, int(task.calls_per_sample))
    n_obs, in_obs, out_obs = observed
    k = len(pending) if units is None else units
    if not k or not pending:
        return Estimate(0, 0, 0, 0.0 if price else None, None, "nothing pending", epochs)
    if n_obs:
        per_in, per_out = in_obs / n_obs, out_obs / n_obs
        basis = f"observed average of {n_obs} finished {'samples' if epochs == 1 else 'units'}"
    else:
        step = max(1, len(pending) // _PROMPT_SAMPLE)
        measured = pending[::step][:_PROMPT_SAMPLE]
        prompt = sum(estimate_prompt_tokens(task.build_messages(s)) for s in measured) / len(measured)
        # Each later turn re-sends the conversation so far (prompt + earlier answers).
        per_in = sum(prompt + i * max_tokens for i in range(calls))
        per_out = calls * max_tokens
        basis = f"prompt lengths + max_tokens {max_tokens} × {calls} call(s); an upper bound on output"
    per_cost = price.cost(int(per_in), int(per_out)) if price else None
    return Estimate(k, int(per_in * k), int(per_out * k), None if per_cost is None else per_cost * k, per_cost, basis,
                    epochs)


class Budget:
    """``--max-cost``: admit a sample only if everything spent plus everything in flight stays within it.

    ``spent_before`` is the run's bill so far (:attr:`evalledger.ledger.LedgerScan.billed_cost`);
    NaN or infinite when it is unknown (something was billed without a valid cost, see
    :mod:`evalledger.records`). An unknown spend is never taken as a lower one: nothing is admitted.
    """

    def __init__(self, max_cost: float, spent_before: float, per_sample: float, observed: int = 0) -> None:
        """``per_sample`` is the pre-flight estimate's cost per sample; ``observed`` the finished
        samples it averages (0: a projection from prompts and max_tokens, not an average)."""
        self.max_cost = max_cost
        self.spent_before = spent_before
        self.spent_known = math.isfinite(spent_before)
        self.spent_now = 0.0
        self.per_sample = per_sample  # the ceiling used to admit a sample, refined as samples finish
        self._max_seen = 0.0
        # The average that `estimate` would project, over the same finished samples.
        self._avg_n = observed
        self._avg_sum = per_sample * observed
        self._first_guess = per_sample
        self.changed = asyncio.Event()  # set whenever spend or the projection changes

    @property
    def spent(self) -> float:
        return self.spent_before + self.spent_now

    def add(self, paid_cost: float, finished_sample: bool, sample_cost: float | None = None) -> None:
        """Account a paid amount; a finished sample's full cost refines the per-sample projection.

        The projection is the most expensive sample seen so far, not the average: a budget is a
        ceiling, so admitting a sample must not count on it being cheaper than its predecessors.
        """
        self.spent_now += paid_cost
        if finished_sample and sample_cost is not None:
            self._max_seen = max(self._max_seen, sample_cost)
            self.per_sample = self._max_seen
            self._avg_n += 1
            self._avg_sum += sample_cost
        self.changed.set()

    @property
    def average(self) -> float:
        """The projected cost of one more sample, as ``estimate`` projects it: the average of the
        finished samples (the pre-flight projection while there are none)."""
        return self._avg_sum / self._avg_n if self._avg_n else self._first_guess

    def enough_for(self, remaining: int) -> float:
        """A ``--max-cost`` that admits every one of ``remaining`` samples under the admission
        rule (each at the costliest sample so far), rounded up to a cent."""
        return math.ceil((self.spent + remaining * self.per_sample) * 100 - 1e-9) / 100

    def fits(self, more: float) -> bool:
        """Would spending ``more`` on top of what is spent stay within the budget (never while the
        spend is unknown)?"""
        return self.spent_known and self.spent + more <= self.max_cost + 1e-12

    def admits(self, in_flight: int) -> bool:
        """Would one more sample, with ``in_flight`` others still unpaid, stay within the budget?"""
        return self.fits((in_flight + 1) * self.per_sample)

    def message(self, remaining: int, noun: str = "sample(s)") -> str:
        """Why the run stopped, for its summary (``remaining`` ``noun``: samples, or units of work)."""
        if not self.spent_known:
            return ("stopped: budget: what this run has spent so far is unknown, so --max-cost "
                    f"${self.max_cost:,.4f} cannot be kept: its ledger holds tokens billed without a valid cost "
                    "(null, as when the model had no price then, or NaN, Infinity, negative, not a number; "
                    f"`evalledger stats` shows the cost as unknown too). {remaining} {noun} left: continue "
                    "without --max-cost.")
        return (f"stopped: budget reached: spent ${self.spent:,.4f} of --max-cost ${self.max_cost:,.4f}; "
                f"{remaining} {noun} left, about ${remaining * self.average:,.4f} more at the average so far "
                f"(up to ${remaining * self.per_sample:,.4f} at the costliest one). The resume command below "
                f"raises --max-cost to ${self.enough_for(remaining):,.2f}, enough for all of them; change it "
                "as you like (the run resumes where it stopped).")
