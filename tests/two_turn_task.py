"""A minimal two-turn task for tests: ask, then ask for a review ("REVIEW-TURN") in the same conversation."""

from __future__ import annotations

from evalledger.tasks import QATask, Task, TaskOutput

REVIEW = "REVIEW-TURN: check your answer and give the final one as '#### N'."


class TwoTurn(Task):
    name = "two-turn"
    prompt_version = "two-turn-v1"
    required_fields = ("question", "answer")
    multi_turn = True  # the runner persists each call, so a crash between turns never pays turn 1 twice
    calls_per_sample = 2

    def __init__(self) -> None:
        self.base = QATask()

    def build_messages(self, sample):
        return self.base.build_messages(sample)

    def score(self, response, sample):
        return self.base.score(response, sample)

    async def run(self, sample, generate, rng):
        messages = self.build_messages(sample)
        first = await generate(messages)
        convo = [*messages, {"role": "assistant", "content": first}, {"role": "user", "content": REVIEW}]
        second = await generate(convo)
        return TaskOutput(messages=convo, responses=[first, second], score=self.score(second, sample),
                          extra={"first_correct": self.score(first, sample).correct})
