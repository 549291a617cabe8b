"""GSM8K-style numeric question answering.

The model is asked to reason step by step and finish with ``#### <number>`` (the format of the
GSM8K reference solutions). Scoring extracts one number from the response and compares it with
the reference numerically, so ``"18.00"``, ``"$18"`` and ``"18"`` are the same answer.

The extraction helpers are pure module-level functions so other tasks (e.g. self-correction on
GSM8K) score exactly the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from decimal import Decimal, InvalidOperation
from itertools import compress, repeat
from operator import and_, itemgetter, not_
from typing import Any

from evalledger.samples import Sample
from evalledger.tasks.base import Message, Score, Task

__all__ = [
    "QATask",
    "extract_number_answer",
    "normalize_number",
    "numbers_equal",
    "gsm8k_target",
]

# One number as written in prose: optional minus, an integer part with thousands separators
# ("1,080") or plain digits, optional decimal part; or a bare decimal (".5").
# The lookbehind keeps a match from starting inside a word or token ("x2", "v1.5") and reads the
# hyphen in "2-8" as a dash rather than the sign of "-8".
# The lookahead stops backtracking into a shorter prefix ("12" of "123") and skips both parts of
# a fraction: "3/4" is neither 3 nor 4, and fractions are not evaluated (integers and decimals only).
_NUMBER = (
    r"(?<![\w./])-?(?:(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)(?!\d|\.\d|/\d)"
)
_NUMBER_RE = re.compile(_NUMBER)

# Decorations a model puts between "the answer is" and the number: spaces, colons, markdown bold,
# a dollar sign (currency or LaTeX math), LaTeX \( \boxed{ \text{ wrappers, an opening paren.
_DECOR = r"(?:[\s:*$(]|\\\(|\\\[|\\boxed\{|\\text\{|\\textbf\{|\\mathbf\{)*"

# "The answer is 18", "the final answer is: $\boxed{18}$", "Answer: **$1,080**".
# The leading "(?<!\w)" stops "canswer"-style false hits; "is"/":" is required so that prose like
# "to answer 3 questions" is not taken as an answer statement.
_ANSWER_IS_RE = re.compile(
    r"(?<!\w)answer\s*(?:is|:|=)" + _DECOR + r"(" + _NUMBER + r")",
    re.IGNORECASE,
)

# \boxed{...} contents (no nested braces needed for a number).
_BOXED_RE = re.compile(r"\\boxed\{([^{}]*)\}")

# "#### 18" up to the end of its line.
_HASHES_RE = re.compile(r"####([^\n]*)")

# Characters models use for minus that Decimal does not read.
_MINUS_SIGNS = str.maketrans({"\u2212": "-", "\u2013": "-", "\u2012": "-", "\ufe63": "-", "\uff0d": "-"})


def normalize_number(s: str) -> str | None:
    """Canonical string for a number written as text, or ``None`` if ``s`` is not one number.

    Strips surrounding whitespace, markdown bold, ``$``, ``%``, thousands commas and a trailing
    period, reads the rest with :class:`~decimal.Decimal` and returns it in plain notation without
    trailing zeros: ``"$1,080."`` → ``"1080"``, ``"18.00"`` → ``"18"``, ``"-0.50"`` → ``"-0.5"``.
    Fractions such as ``"3/4"`` and words are not numbers here (``None``).
    """
    if not isinstance(s, str):
        return None
    text = s.translate(_MINUS_SIGNS).strip().strip("*").strip()
    text = text.rstrip(".").strip()
    # A sign may precede the currency symbol ("-$5") or follow it ("$-5").
    negative = text.startswith("-")
    if negative:
        text = text[1:].lstrip()
    text = text.lstrip("$").strip().rstrip("%").strip()
    if text.startswith("-"):
        if negative:
            return None  # "--5" is not a number
        negative = True
        text = text[1:]
    text = text.replace(",", "")
    # Decimal accepts "Infinity", "NaN", exponents and surrounding whitespace; a numeric answer
    # is only digits with at most one decimal point.
    if not re.fullmatch(r"\d+(?:\.\d*)?|\.\d+", text):
        return None
    try:
        value = Decimal(text)
    except InvalidOperation:  # pragma: no cover - the fullmatch above already guarantees syntax
        return None
    if negative:
        value = -value
    return _format_decimal(value)


def _format_decimal(value: Decimal) -> str:
    """Plain-notation string without trailing zeros; ``-0`` becomes ``0``."""
    if value == 0:
        return "0"
    # normalize() strips trailing zeros but may switch to exponent form (1E+2); "f" undoes that.
    return format(value.normalize(), "f")


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Whether two number strings denote the same value (``Decimal`` equality); ``None`` never equals."""
    if a is None or b is None:
        return False
    na, nb = normalize_number(a), normalize_number(b)
    if na is None or nb is None:
        return False
    return Decimal(na) == Decimal(nb)


def _first_number(text: str) -> str | None:
    match = _NUMBER_RE.search(text)
    return normalize_number(match.group(0)) if match else None


def _last_number(text: str) -> str | None:
    matches = _NUMBER_RE.findall(text)
    return normalize_number(matches[-1]) if matches else None


def extract_number_answer(text: str) -> str | None:
    """The model's final numeric answer in ``text``, normalised, or ``None`` if there is none.

    Tried in order, each taking the *last* occurrence because models often restate or correct
    themselves before finishing:

    1. a ``#### N`` line (the format the prompt asks for);
    2. "the (final) answer is N" / "Answer: N", allowing ``$``, ``**N**`` and ``\\boxed{N}``;
    3. a ``\\boxed{N}`` anywhere (LaTeX-style models often box the result without saying "answer");
    4. the last number anywhere in the text.
    """
    if not text:
        return None
    text = text.translate(_MINUS_SIGNS)

    for line in reversed(_HASHES_RE.findall(text)):
        number = _first_number(line)
        if number is not None:
            return number

    answer_matches = _ANSWER_IS_RE.findall(text)
    for candidate in reversed(answer_matches):
        number = normalize_number(candidate)
        if number is not None:
            return number

    for boxed in reversed(_BOXED_RE.findall(text)):
        number = _first_number(boxed)
        if number is not None:
            return number

    return _last_number(text)


def _answer_tail(answer: str) -> str:
    """What follows the last ``####`` of a GSM8K-style answer (all of it without one), stripped."""
    return answer.rpartition("####")[2].strip()


def gsm8k_target(answer: str) -> str | None:
    """The normalised reference number of a GSM8K ``answer`` field.

    GSM8K solutions end in ``\\n#### 18``; the target is the text after the last ``####``. A field
    without ``####`` is taken to be the bare answer (other datasets in the same shape).
    """
    text = str(answer)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    return normalize_number(text)


SYSTEM_PROMPT = (
    "Solve the following math problem step by step. "
    "After your reasoning, end your response with a final line of the form '#### <number>', "
    "where <number> is only the final numerical answer, without units."
)


class QATask(Task):
    """GSM8K-style numeric QA: rows have ``question`` and ``answer`` (a worked solution).

    ``prompt_version`` is part of the run ID: change it whenever :data:`SYSTEM_PROMPT` or the
    message layout changes, so results from different prompts never share a run.
    """

    name = "qa"
    prompt_version = "qa-v1"
    required_fields = ("question", "answer")
    exemplar_version = "qa-fewshot-v1"

    def build_messages(self, sample: Sample) -> list[Message]:
        """A system message with the answer format, then the question as the user message (after
        the sample's exemplars, if it carries any)."""
        return self.with_exemplars([
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": str(sample["question"])},
        ], sample)

    def exemplar_answer(self, exemplar: Sample) -> str:
        """The worked solution: the row's ``target`` when it has one (the chain-of-thought exemplars'
        reasoning, ending in "The answer is X."), else its ``answer`` (GSM8K's, ending in "#### X")."""
        for name in ("target", "answer"):
            value = exemplar.fields.get(name)
            # An empty CSV cell arrives as None or NaN: the row has no such field.
            text = "" if value is None or value != value else str(value).strip()
            if text:
                return text
        raise ValueError("it has no 'target' or 'answer' to show")

    def validate_sample(self, sample: Sample) -> str | None:
        """Reject rows whose reference answer has no readable number (they could never score)."""
        answer = sample.fields.get("answer")
        if type(answer) is str:
            # Fast path for the usual "... #### 18": plain ASCII digits are always a number.
            tail = _answer_tail(answer)
            if tail.isascii() and tail.isdecimal():
                return None
        if answer is None or gsm8k_target(str(answer)) is None:
            return (
                f"field 'answer' has no numeric final answer (expected a number, or a solution "
                f"ending in '#### <number>'): {str(answer)[-80:]!r}"
            )
        return None

    def rows_to_validate(self, rows: Sequence[dict[str, Any]]) -> Iterable[int]:
        """The rows :meth:`validate_sample`'s fast rule does not pass: a text ``answer`` whose part
        after the last ``####`` is plain ASCII digits is a number (:func:`_answer_tail`, in C-level loops)."""
        answers = list(map(dict.get, rows, repeat("answer")))
        if set(map(type, answers)) != {str}:
            return range(len(rows))
        tails = list(map(str.strip, map(itemgetter(2), map(str.rpartition, answers, repeat("####")))))
        passed = map(and_, map(str.isascii, tails), map(str.isdecimal, tails))
        return list(compress(range(len(rows)), map(not_, passed)))

    def score(self, response: str, sample: Sample) -> Score:
        """Extract a number from ``response`` and compare it numerically with the target."""
        target = gsm8k_target(str(sample["answer"]))
        prediction = extract_number_answer(response)
        correct = numbers_equal(prediction, target)
        return Score(prediction=prediction, target=target, score=correct, correct=correct)
