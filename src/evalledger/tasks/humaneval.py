"""HumanEval: complete a Python function; pass@1 by running the dataset's tests on it.

The model sees the function's signature and docstring and is asked for the complete function in a
fenced code block. :func:`extract_code` takes the code out of the reply, :func:`build_program`
turns it into a program (prompt + completion + tests + ``check(entry_point)``), and the program
runs in :mod:`evalledger.sandbox`. The answer is correct iff the program exits with status 0.

Running model-written code is dangerous, so the task sets ``executes_code = True`` and
``prepare_run`` refuses it unless the user passed ``--allow-code-execution``.
"""

from __future__ import annotations

import ast
import asyncio
import os
import random
import re
import textwrap
import weakref
from typing import Any

from evalledger.samples import Sample
from evalledger.sandbox import ExecutionResult, SandboxLimits, run_python, run_python_async
from evalledger.tasks.base import Generate, Message, Score, Task, TaskOutput

__all__ = ["INSTRUCTION", "HumanEvalTask", "build_program", "complete_function", "extract_code"]

INSTRUCTION = (
    "Complete the following Python function. Reply with the complete function, including its "
    "signature and any imports it needs, in a single ```python code block."
)

# The program's __name__: not "__main__", so a model's `if __name__ == "__main__":` demo block
# does not run (the reference harness exec()s without a __main__ name either).
RUN_NAME = "__humaneval__"

# ```python ... ``` (also ```py / ```python3 / ```Python); a missing closing fence (a reply cut
# off by max_tokens) runs to the end of the text.
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = frozenset({"python", "py", "python3", "py3"})


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The code in a model's reply.

    Fenced blocks win over the bare text: among blocks tagged ``python`` (or, if none is tagged,
    all fenced blocks) the first one that defines ``entry_point`` at top level, else the first one.
    A reply without any fence is taken as code as it is.
    """
    blocks = [(tag.lower(), body) for tag, body in _FENCE_RE.findall(response or "")]
    if not blocks:
        return response or ""
    tagged = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    candidates = tagged or [body for _tag, body in blocks]
    if entry_point:
        for body in candidates:
            if _defines(body, entry_point):
                return body
    return candidates[0]


def _defines(code: str, entry_point: str) -> bool:
    """Whether ``code`` defines ``entry_point`` at top level (``def name(`` at its least indentation)."""
    pattern = rf"^(?:async\s+)?def\s+{re.escape(entry_point)}\s*\("
    return re.search(pattern, textwrap.dedent(code), re.MULTILINE) is not None


def _parses(source: str) -> bool:
    try:
        ast.parse(source)
    except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
        return False
    return True


def _body_candidates(code: str) -> list[str]:
    """Ways to read ``code`` as the body of the prompt's function, most literal first.

    A body may come correctly indented; wholly unindented ("return x"); or with only its first
    line's indentation lost (an API or a model that strips the reply), where the rest is still
    indented relative to the function.
    """
    lines = code.strip("\n").splitlines()
    non_blank = [line for line in lines if line.strip()]
    if not non_blank:
        return ["    pass\n"]
    candidates: list[str] = []
    first = non_blank[0]
    if first[:1] in (" ", "\t"):
        candidates.append("\n".join(lines) + "\n")
    else:
        rest = non_blank[1:]
        if all(len(line) - len(line.lstrip()) >= 4 for line in rest):
            index = lines.index(first)
            fixed = lines[:index] + ["    " + first] + lines[index + 1:]
            candidates.append("\n".join(fixed) + "\n")
    candidates.append(textwrap.indent(textwrap.dedent("\n".join(lines)), "    ") + "\n")
    return candidates


def complete_function(prompt: str, code: str, entry_point: str) -> str:
    """The prompt with the model's code in place: the module the tests are appended to.

    If ``code`` defines ``entry_point`` itself (the model repeated the whole function), it is
    appended after the prompt, whose own definition (signature and docstring only) it replaces;
    the prompt still supplies imports and helper functions. Otherwise ``code`` is the function's
    body, indented as needed; the first reading that parses wins, and if none does the last one is
    used, so the program fails with the ``SyntaxError`` a human would expect to see.
    """
    prompt = prompt if prompt.endswith("\n") else prompt + "\n"
    if _defines(code, entry_point):
        return prompt + "\n" + textwrap.dedent(code).strip("\n") + "\n"
    candidates = _body_candidates(code)
    for body in candidates:
        if _parses(prompt + body):
            return prompt + body
    return prompt + candidates[-1]


def build_program(sample: Sample, code: str) -> str:
    """The whole program for one sample: completed function, the dataset's tests, the check call."""
    entry_point = str(sample["entry_point"])
    return (
        complete_function(str(sample["prompt"]), code, entry_point)
        + "\n\n"
        + str(sample["test"]).strip("\n")
        + f"\n\n\ncheck({entry_point})\n"
    )


class HumanEvalTask(Task):
    """HumanEval pass@1: rows have ``task_id``, ``prompt``, ``test`` and ``entry_point``.

    ``prompt_version`` is part of the run ID: change it whenever :data:`INSTRUCTION`, the message
    layout or the way programs are built changes. ``limits`` bound each test run; at most
    ``max_parallel`` programs run at once per event loop (``None``: the number of CPUs), so
    wall-clock timeouts are not tripped by programs competing for the CPU at high concurrency.
    """

    name = "humaneval"
    prompt_version = "humaneval-v1"
    required_fields = ("task_id", "prompt", "test", "entry_point")
    executes_code = True
    exemplar_version = "humaneval-fewshot-v1"

    def __init__(self, limits: SandboxLimits | None = None, max_parallel: int | None = None) -> None:
        self.limits = limits or SandboxLimits()
        self.max_parallel = max_parallel
        self._gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
            weakref.WeakKeyDictionary()
        )

    def validate_sample(self, sample: Sample) -> str | None:
        """A problem if the prompt does not parse or does not define ``entry_point``."""
        entry_point = str(sample.fields.get("entry_point", ""))
        if not entry_point.isidentifier():
            return f"field 'entry_point' = {entry_point!r} is not a Python identifier"
        prompt = str(sample.fields.get("prompt", ""))
        if not _parses(prompt):
            return "field 'prompt' is not valid Python"
        if not _defines(prompt, entry_point):
            return f"field 'prompt' does not define function {entry_point!r}"
        return None

    def build_messages(self, sample: Sample) -> list[Message]:
        """One user message: the instruction, then the prompt in a python code block (after the
        sample's exemplars, if it carries any)."""
        prompt = str(sample["prompt"]).rstrip("\n")
        return self.with_exemplars([{"role": "user", "content": f"{INSTRUCTION}\n\n```python\n{prompt}\n```"}],
                                   sample)

    def exemplar_answer(self, exemplar: Sample) -> str:
        """The complete function (the prompt and its ``canonical_solution``) in a python code block,
        the reply :data:`INSTRUCTION` asks for."""
        solution = exemplar.fields.get("canonical_solution")
        if not isinstance(solution, str) or not solution.strip():
            raise ValueError("field 'canonical_solution' (the worked answer) is missing or empty")
        prompt = str(exemplar["prompt"])
        prompt = prompt if prompt.endswith("\n") else prompt + "\n"
        return f"```python\n{prompt}{solution.rstrip()}\n```"

    def score(self, response: str, sample: Sample) -> Score:
        """Run the tests on the reply's code (blocking). Async callers use :meth:`score_with_details`."""
        code = extract_code(response, str(sample["entry_point"]))
        result = run_python(build_program(sample, code), self.limits, run_name=RUN_NAME)
        return _score(code, result)

    async def score_with_details(self, response: str, sample: Sample) -> tuple[Score, dict[str, Any]]:
        """Run the tests without blocking the event loop; the score and ``{"execution": ...}``.

        The details say how the program ended (exit code, timeout, output tails, duration), so a
        failure can be told apart from a timeout in the record.
        """
        code = extract_code(response, str(sample["entry_point"]))
        program = build_program(sample, code)
        async with self._gate():
            result = await run_python_async(program, self.limits, run_name=RUN_NAME)
        return _score(code, result), {"execution": result.as_dict()}

    async def run(self, sample: Sample, generate: Generate, rng: random.Random) -> TaskOutput:
        """Ask once, then run the tests on the reply in a child process (not on the event loop)."""
        messages = self.build_messages(sample)
        text = await generate(messages)
        score, details = await self.score_with_details(text, sample)
        return TaskOutput(messages=messages, responses=[text], score=score, extra=details)

    def _gate(self) -> asyncio.Semaphore:
        # One semaphore per event loop: asyncio primitives must not be shared across loops, and
        # the same task object may be scored from several (asyncio.run in tests, helper threads).
        loop = asyncio.get_running_loop()
        gate = self._gates.get(loop)
        if gate is None:
            gate = asyncio.Semaphore(self.max_parallel or os.cpu_count() or 1)
            self._gates[loop] = gate
        return gate


def _score(code: str, result: ExecutionResult) -> Score:
    """pass@1 for one sample: the prediction is the code that ran; there is no target text."""
    return Score(prediction=code, target=None, score=result.passed, correct=result.passed)
