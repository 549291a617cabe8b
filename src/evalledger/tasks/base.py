"""The task interface: build messages, call the model through an injected function, score.

Tasks are pure: they never touch files or the network. The runner injects ``generate``, which
sends one chat request (with retries, limits and usage accounting handled outside the task).
"""

from __future__ import annotations

import dataclasses
import random
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
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

    A task that can show worked examples (``--fewshot N``) sets ``exemplar_version``, implements
    :meth:`exemplar_answer`, and passes its prompt through :meth:`with_exemplars` in
    :meth:`build_messages`, which then puts the exemplars a sample carries (``Sample.fewshot``)
    before its question as user/assistant pairs.
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
    #: How worked examples are laid out in the prompt (part of the run ID with ``--fewshot``): change
    #: it whenever :meth:`exemplar_answer` or :meth:`with_exemplars` changes what they look like.
    #: Empty: the task cannot show worked examples, and ``--fewshot`` is refused for it.
    exemplar_version: str = ""

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

    def rows_to_validate(self, rows: Sequence[dict[str, Any]]) -> Iterable[int]:
        """The positions in ``rows`` (rows' fields, in file order) whose :meth:`validate_sample` may
        find a problem: a large dataset's rows are checked a column at a time, and
        :meth:`validate_sample` then runs on these only. A task whose check passes most rows by a
        rule that can be applied to a whole column at once names the others; by default every row,
        and none when the task does not override :meth:`validate_sample`."""
        return () if type(self).validate_sample is Task.validate_sample else range(len(rows))

    def exemplar_answer(self, exemplar: Sample) -> str:
        """The assistant's turn of one worked example: the exemplar's answer, in the format the task
        asks the model for. Raises ValueError (or KeyError) for a row that has no answer to show."""
        raise NotImplementedError(f"task {self.name or type(self).__name__} cannot show worked examples")

    def exemplar_key(self, sample: Sample) -> str:
        """The question ``sample`` asks: an exemplar asking the same question (whitespace aside) is the
        sample itself and is never shown with it. By default the question as the task shows it."""
        return self.question_text(sample)

    def question_text(self, sample: Sample) -> str:
        """The user message that asks ``sample``'s question: the last one of its zero-shot prompt."""
        bare = dataclasses.replace(sample, fewshot=()) if sample.fewshot else sample
        for message in reversed(self.build_messages(bare)):
            if message["role"] == "user":
                return message["content"]
        raise ValueError(f"task {self.name or type(self).__name__}: its prompt has no user message")

    def with_exemplars(self, messages: list[Message], sample: Sample) -> list[Message]:
        """``messages``, a zero-shot prompt ending in the question as a user message, with the sample's
        exemplars before that question: for each, its question formatted exactly like the question
        (user) and its worked answer (assistant), so the model sees the answer format it is asked for."""
        if not sample.fewshot:
            return messages
        at = max(i for i, message in enumerate(messages) if message["role"] == "user")
        pairs: list[Message] = []
        for exemplar in sample.fewshot:
            pairs.append({"role": "user", "content": self.question_text(exemplar)})
            pairs.append({"role": "assistant", "content": self.exemplar_answer(exemplar)})
        return [*messages[:at], *pairs, *messages[at:]]

    def validate_exemplar(self, exemplar: Sample) -> str | None:
        """A problem if ``exemplar`` cannot be shown as a worked example, else ``None``.

        The row must pass :meth:`validate_sample` and have an answer to show, and (unless scoring
        runs code) that answer must score as correct with the task's own scorer: the format the
        exemplars teach is then one the answer extraction reads.
        """
        problem = self.validate_sample(exemplar)
        if problem:
            return problem
        try:
            answer = self.exemplar_answer(exemplar)
        except (KeyError, ValueError, TypeError) as exc:
            return f"it cannot be shown as a worked example: {exc}"
        if not answer.strip():
            return "its worked answer is empty"
        if not self.executes_code and not self.score(answer, exemplar).correct:
            return f"its worked answer does not score as correct with this task's scorer: {answer[-80:]!r}"
        return None

    async def run(self, sample: Sample, generate: Generate, rng: random.Random) -> TaskOutput:
        """One turn: ask, then score. ``rng`` is the per-sample RNG (see ``sample_rng``)."""
        messages = self.build_messages(sample)
        text = await generate(messages)
        return TaskOutput(messages=messages, responses=[text], score=self.score(text, sample))
