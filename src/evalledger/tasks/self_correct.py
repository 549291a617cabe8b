"""Self-correction: the model answers, is asked to review its answer, and answers again.

Turn 1 sends the base task's messages (qa, mcq, humaneval or a custom task). Turn 2 sends the same
conversation plus the model's turn-1 answer as an assistant message and a review prompt
(:data:`REVIEW_PROMPT`, or the text of ``--review-prompt FILE``). Both answers are scored with the
base task's scorer; the sample's score is the final (turn-2) answer's, and the record's ``extra``
holds both turns and the ``transition`` between them, the quantity a self-correction study is about.

Task specs (``--task``): ``self-correct`` wraps the dataset's default task (``qa`` for a file that
is not a built-in dataset); ``self-correct:BASE`` names the base explicitly, where BASE is any other
task spec, including ``package.module:ClassName``.

The messages of turn 2 depend only on the sample and the turn-1 reply, so a runner that replays
cached replies on resume sends exactly the same conversation (no state is kept here).
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from typing import Any

from evalledger.samples import Sample
from evalledger.tasks.base import Generate, Message, Score, Task, TaskOutput
from evalledger.tasks.qa import QATask

__all__ = [
    "REVIEW_PROMPT",
    "REVIEW_PROMPT_VERSION",
    "SELF_CORRECT",
    "SelfCorrectTask",
    "score_response",
    "transition",
]

SELF_CORRECT = "self-correct"
"""The task name, and the prefix of its specs (``self-correct`` / ``self-correct:BASE``)."""

REVIEW_PROMPT = (
    "Review your previous answer and find problems with it; "
    "then give your final answer in the same format."
)

REVIEW_PROMPT_VERSION = "review-v1"
"""Part of the run ID (through ``prompt_version``): change it whenever :data:`REVIEW_PROMPT` or the
layout of turn 2 changes. A replaced review prompt is covered by its sha256 in the identity instead."""

CORRECT, INCORRECT = "correct", "incorrect"


def transition(before: bool, after: bool) -> str:
    """``"correct→incorrect"`` and so on: how review changed the answer's correctness."""
    return f"{CORRECT if before else INCORRECT}→{CORRECT if after else INCORRECT}"


async def score_response(task: Task, response: str, sample: Sample) -> tuple[Score, dict[str, Any]]:
    """Score ``response`` with ``task``'s scorer; the score and any details it reports.

    Tasks whose scoring must not run on the event loop (HumanEval runs a program) provide
    ``async score_with_details(response, sample) -> (Score, dict)``; for the others ``score`` is
    pure and quick, and the details are empty.
    """
    detailed = getattr(task, "score_with_details", None)
    if detailed is not None:
        score, details = await detailed(response, sample)
        return score, dict(details)
    return task.score(response, sample), {}


class SelfCorrectTask(Task):
    """Two turns in one conversation: the base task's question, then a review of the answer.

    ``name`` is ``"self-correct"``; ``prompt_version`` combines the review prompt's version with the
    base task's name and prompt version, so a change to either gives a new run ID.
    ``required_fields``, ``validate_sample`` and the scorer are the base task's. A base task that
    overrides ``run`` (a multi-turn task of its own) is used through ``build_messages`` only.
    """

    name = SELF_CORRECT
    # Two model calls per sample; the runner persists each (calls.jsonl) so a crash between the
    # turns resumes at turn 2 without paying for turn 1 again.
    multi_turn = True
    calls_per_sample = 2

    def __init__(self, base: Task | None = None, review_prompt: str | None = None) -> None:
        if base is None:
            # Constructible without arguments like every built-in task; qa is the default task.

            base = QATask()
        if isinstance(base, SelfCorrectTask):
            raise TypeError("self-correct cannot wrap itself")
        text = REVIEW_PROMPT if review_prompt is None else review_prompt.strip()
        if not text:
            raise ValueError("the review prompt is empty")
        self.base = base
        self.review_prompt = text
        self.custom_review_prompt = review_prompt is not None
        base_name = base.name or type(base).__name__
        self.prompt_version = f"{REVIEW_PROMPT_VERSION}+{base_name}:{base.prompt_version}"
        self.required_fields = tuple(base.required_fields)
        # Running the base's code (HumanEval) makes this task run code too: the same refusal applies.
        self.executes_code = bool(getattr(base, "executes_code", False))
        # Turn 1 is the base's prompt, exemplars included: they are laid out the base's way.
        self.exemplar_version = base.exemplar_version

    def validate_sample(self, sample: Sample) -> str | None:
        """The base task's check."""
        return self.base.validate_sample(sample)

    def rows_to_validate(self, rows: Sequence[dict[str, Any]]) -> Iterable[int]:
        """The base task's rows to check."""
        return self.base.rows_to_validate(rows)

    def build_messages(self, sample: Sample) -> list[Message]:
        """Turn 1: the base task's messages, unchanged (its exemplars included)."""
        return self.base.build_messages(sample)

    def exemplar_answer(self, exemplar: Sample) -> str:
        """The base task's worked answer."""
        return self.base.exemplar_answer(exemplar)

    def exemplar_key(self, sample: Sample) -> str:
        """The base task's question."""
        return self.base.exemplar_key(sample)

    def review_messages(self, sample: Sample, first_response: str) -> list[Message]:
        """Turn 2: turn 1, the model's answer as the assistant, then the review prompt as the user."""
        return [
            *self.build_messages(sample),
            {"role": "assistant", "content": first_response},
            {"role": "user", "content": self.review_prompt},
        ]

    def score(self, response: str, sample: Sample) -> Score:
        """The base task's score of one answer."""
        return self.base.score(response, sample)

    async def run(self, sample: Sample, generate: Generate, rng: random.Random) -> TaskOutput:
        """Ask, score, ask for a review in the same conversation, score again.

        ``extra`` holds ``turns`` (per turn: response, prediction, score, correct, and the base
        scorer's details such as HumanEval's execution), ``correct_before``, ``correct_after``
        and ``transition``; the output's score is the final answer's.
        """
        first_messages = self.build_messages(sample)
        first = await generate(first_messages)
        first_score, first_details = await score_response(self.base, first, sample)

        second_messages = self.review_messages(sample, first)
        second = await generate(second_messages)
        second_score, second_details = await score_response(self.base, second, sample)

        turns = [
            _turn(first, first_score, first_details),
            _turn(second, second_score, second_details),
        ]
        before, after = bool(first_score.correct), bool(second_score.correct)
        extra: dict[str, Any] = {
            "base_task": self.base.name or type(self.base).__name__,
            "turns": turns,
            "correct_before": before,
            "correct_after": after,
            "transition": transition(before, after),
        }
        return TaskOutput(messages=second_messages, responses=[first, second], score=second_score, extra=extra)


def _turn(response: str, score: Score, details: dict[str, Any]) -> dict[str, Any]:
    return {
        "response": response,
        "prediction": score.prediction,
        "score": score.score,
        "correct": bool(score.correct),
        **details,
    }
