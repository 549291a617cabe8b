"""The task interface: build messages, call the model through an injected function, score.

Tasks are pure: they never touch files or the network. The runner injects ``generate``, which
sends one chat request (with retries, limits and usage accounting handled outside the task).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from evalledger.samples import Sample

Message = dict[str, str]
"""A chat message: ``{"role": "system" | "user" | "assistant", "content": str}``."""

Generate = Callable[[list[Message]], Awaitable[str]]
"""Sends the messages to the model and returns the assistant's text."""


@dataclass(frozen=True)
class Score:
    """The result of scoring one response.

    ``prediction`` is what was extracted from the response (``None`` if nothing could be);
    ``target`` the normalised expected answer; ``score`` the task-defined score (bool, float or
    dict); ``correct`` whether the answer counts as correct for accuracy.
    """

    prediction: Any
    target: Any
    score: Any
    correct: bool


@dataclass
class TaskOutput:
    """What a task run produced for one sample (turns in order)."""

    messages: list[Message]
    responses: list[str]
    score: Score
    extra: dict[str, Any] = field(default_factory=dict)


class Task(ABC):
    """Base class for tasks.

    Subclasses set ``name``, ``prompt_version`` (part of the run ID: change it whenever the prompt
    text changes) and ``required_fields`` (checked on every dataset row before a request is sent),
    and implement :meth:`build_messages` and :meth:`score`. Multi-turn tasks override :meth:`run`.
    """

    name: str = ""
    prompt_version: str = "1"
    required_fields: tuple[str, ...] = ()
    #: True if scoring runs model-written code: the run then needs --allow-code-execution.
    executes_code: bool = False
    #: True for tasks that call the model more than once per sample: the runner then persists every
    #: call (calls.jsonl) and replays identical calls on resume, so no turn is paid for twice.
    multi_turn: bool = False
    #: Model calls per sample, for cost estimates.
    calls_per_sample: int = 1

    @abstractmethod
    def build_messages(self, sample: Sample) -> list[Message]:
        """The chat messages for the first (or only) turn."""

    @abstractmethod
    def score(self, response: str, sample: Sample) -> Score:
        """Extract the answer from ``response`` and score it against the sample's target."""

    def validate_sample(self, sample: Sample) -> str | None:
        """Return a problem description if the row cannot be used, else ``None``.

        Called for every row before any request; the default checks nothing beyond
        ``required_fields`` (which the dataset loader checks itself).
        """
        return None

    async def run(self, sample: Sample, generate: Generate, rng: random.Random) -> TaskOutput:
        """One turn: ask, then score. ``rng`` is the per-sample RNG (see ``sample_rng``)."""
        messages = self.build_messages(sample)
        text = await generate(messages)
        return TaskOutput(messages=messages, responses=[text], score=self.score(text, sample))
