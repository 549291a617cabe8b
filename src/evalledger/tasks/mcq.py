"""Multiple-choice questions (MMLU-style), scored by the letter of the chosen option.

Rows come in two shapes:

* ``question``, ``choices`` (a list of strings) and ``answer``;
* the MMLU CSV shape: ``question``, columns ``A``, ``B``, ``C``, ``D`` (up to ``J``) and ``answer``.

``answer`` may be a letter (``"C"``), a 0-based index (``2``, as in the Hugging Face ``cais/mmlu``
export) or the text of the correct choice.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from evalledger.samples import Sample
from evalledger.tasks.base import Message, Score, Task

__all__ = ["MCQTask", "LETTERS", "sample_choices", "answer_letter", "extract_choice_letter"]

LETTERS = "ABCDEFGHIJ"
"""Option letters, in order; at most ten options."""

INSTRUCTION = (
    "Answer with the letter of the correct option. "
    "End your response with a line 'Answer: X' where X is the letter."
)

# Capital letters that are also ordinary English words ("A train leaves...", "I think..."). They
# are only read as an option reference where the context makes that unambiguous.
_WORD_LETTERS = frozenset("AI")


def _is_missing(value: Any) -> bool:
    # pandas turns empty CSV cells into NaN (a float); treat it like an absent column.
    return value is None or (isinstance(value, float) and math.isnan(value))


def _choice_text(value: Any) -> str:
    # pandas may read an all-numeric column as floats ("8.0"); show integral values as integers.
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def sample_choices(sample: Sample) -> list[str] | str:
    """The row's options in letter order, or a problem description (a ``str``) if there are none.

    ``choices`` wins when present; otherwise consecutive columns ``A``, ``B``, … are read until the
    first one that is absent or empty.
    """
    fields = sample.fields
    if "choices" in fields and not _is_missing(fields["choices"]):
        raw = fields["choices"]
        if not isinstance(raw, (list, tuple)):
            return f"field 'choices' must be a list of strings, got {type(raw).__name__}: {str(raw)[:80]!r}"
        if len(raw) == 0:
            return "field 'choices' is empty"
        if len(raw) > len(LETTERS):
            return f"field 'choices' has {len(raw)} options; at most {len(LETTERS)} (A-J) are supported"
        missing = [LETTERS[i] for i, value in enumerate(raw) if _is_missing(value)]
        if missing:
            return f"field 'choices' has empty option(s) {', '.join(missing)}"
        return [_choice_text(value) for value in raw]

    choices: list[str] = []
    for letter in LETTERS:
        value = fields.get(letter)
        if _is_missing(value):
            break
        choices.append(_choice_text(value))
    if not choices:
        return "no options: expected a 'choices' list or columns 'A', 'B', 'C', 'D'"
    return choices


def answer_letter(answer: Any, choices: list[str]) -> str | None:
    """The letter of the correct option for an ``answer`` field value, or ``None`` if it maps to none.

    A letter is taken as a letter (even if some choice's text is also that letter, the convention in
    every MCQ dataset we know), an ``int`` as a 0-based index, anything else as a choice's text.
    A digit string such as ``"2"`` is read as choice text when some choice says exactly that, else
    as an index (CSV loaders turn index columns into strings); if it could mean two different
    options it is rejected rather than guessed.
    """
    letters = LETTERS[: len(choices)]
    if isinstance(answer, bool) or _is_missing(answer):
        return None
    if isinstance(answer, float):
        if not answer.is_integer():
            return None
        answer = int(answer)
    if isinstance(answer, numbers.Integral):  # also numpy integers from a pandas-loaded file
        answer = int(answer)
        return letters[answer] if 0 <= answer < len(letters) else None

    text = str(answer).strip()
    if len(text) == 1 and text.upper() in LETTERS:
        return text.upper() if text.upper() in letters else None
    by_text = [letters[i] for i, choice in enumerate(choices) if choice.strip() == text]
    by_index = letters[int(text)] if text.isdigit() and int(text) < len(letters) else None
    if by_index is not None and by_text and by_text != [by_index]:
        return None  # "2" is both option C (index 2) and the text of another option
    if len(by_text) == 1:
        return by_text[0]
    if len(by_text) > 1:
        return None  # two options with the same text: the answer is ambiguous
    return by_index


def format_question(question: str, choices: list[str]) -> str:
    """The user message: question, one ``"X. choice"`` line per option, then the instruction."""
    lines = [question.strip(), ""]
    lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices)]
    lines += ["", INSTRUCTION]
    return "\n".join(lines)


def _explicit_answer_re(letters: str) -> re.Pattern[str]:
    # "Answer: C", "the answer is (C)", "answer: **C**", "The correct answer is option C.",
    # "Final Answer: $\boxed{C}$". "answer" is matched in any case but the letter must be a capital
    # followed by a non-letter, so "the answer is a bit unclear" and "Answer: Apples" do not count.
    return re.compile(
        r"(?<![A-Za-z])(?i:answer)\s*(?:(?i:is)|:|=)"
        r"(?:[\s:*$'\"(\[{]|\\boxed\{|\\text\{|\\textbf\{|\\\(|(?i:option|choice)\b)*"
        rf"([{letters}])(?![A-Za-z0-9])"
    )


def _bare_letter_re(letters: str) -> re.Pattern[str]:
    # The whole response is one letter, possibly decorated: "B", "(B)", "B.", "**B**", "[B]".
    return re.compile(rf"\s*\**\s*[(\[]?\s*([{letters}])\s*[)\]]?\s*[.:]?\s*\**\s*")


def _standalone_letter_re(letters: str) -> re.Pattern[str]:
    # A capital letter that is a word by itself, with enough context to tell whether it is an
    # option reference: the characters just before and after it are captured for the A/I check.
    return re.compile(rf"(?<![A-Za-z0-9])(\(?)([{letters}])(?![A-Za-z0-9'’])([).:]?)")


_OPTION_WORD_RE = re.compile(r"(?i:option|choice|answer)\s*$")


def extract_choice_letter(text: str, n_choices: int) -> str | None:
    """The option letter the response chose, or ``None``.

    Tried in order (the last occurrence wins within each rule, since models restate and correct
    themselves before finishing):

    1. an explicit answer statement: "Answer: X", "the answer is (X)", "answer: **X**";
    2. a response that is only a letter: "B", "(B)", "B.";
    3. the last valid capital letter standing alone as a word ("option C", "C)"). The letters
       ``A`` and ``I`` are also English words, so they count only when parenthesised, followed
       by ``)`` / ``.`` / ``:``, or preceded by "option"/"choice"/"answer".
    """
    if not text or n_choices <= 0:
        return None
    letters = LETTERS[: min(n_choices, len(LETTERS))]

    explicit = _explicit_answer_re(letters).findall(text)
    if explicit:
        return explicit[-1]

    bare = _bare_letter_re(letters).fullmatch(text)
    if bare:
        return bare.group(1)

    for match in reversed(list(_standalone_letter_re(letters).finditer(text))):
        _opening, letter, closing = match.groups()
        if letter not in _WORD_LETTERS:
            return letter
        if closing:  # "(A)", "A)", "A.", "A:" -- prose "A" is followed by a space
            return letter
        if _OPTION_WORD_RE.search(text[: match.start()]):
            return letter
    return None


class MCQTask(Task):
    """Multiple choice: one user message listing lettered options; scored by letter.

    ``prompt_version`` is part of the run ID: change it whenever :data:`INSTRUCTION` or the layout
    built by :func:`format_question` changes.
    """

    name = "mcq"
    prompt_version = "mcq-v1"
    required_fields = ("question", "answer")
    exemplar_version = "mcq-fewshot-v1"

    def validate_sample(self, sample: Sample) -> str | None:
        """A problem if the row has no usable options or its answer maps to none of them."""
        choices = sample_choices(sample)
        if isinstance(choices, str):
            return choices
        answer = sample.fields.get("answer")
        if answer_letter(answer, choices) is None:
            letters = LETTERS[: len(choices)]
            return (
                f"field 'answer' = {answer!r} does not identify exactly one of the {len(choices)} "
                f"options (expected a letter {letters[0]}-{letters[-1]}, a 0-based index "
                f"0-{len(choices) - 1}, or the text of one choice)"
            )
        return None

    def build_messages(self, sample: Sample) -> list[Message]:
        """One user message: the question, the lettered options and the answer-format instruction
        (after the sample's exemplars, if it carries any)."""
        choices = self._choices(sample)
        return self.with_exemplars([{"role": "user", "content": format_question(str(sample["question"]), choices)}],
                                   sample)

    def exemplar_answer(self, exemplar: Sample) -> str:
        """``Answer: X``, the line :data:`INSTRUCTION` asks the model to end with."""
        letter = answer_letter(exemplar["answer"], self._choices(exemplar))
        if letter is None:
            raise ValueError(f"answer {exemplar['answer']!r} matches no option")
        return f"Answer: {letter}"

    def exemplar_key(self, sample: Sample) -> str:
        """The question without its options: the same question with other or reordered options is
        still the sample itself."""
        return str(sample["question"])

    def score(self, response: str, sample: Sample) -> Score:
        """Extract the chosen letter and compare it with the correct option's letter."""
        choices = self._choices(sample)
        target = answer_letter(sample["answer"], choices)
        if target is None:
            raise ValueError(f"row {sample.row}: answer {sample['answer']!r} matches no option")
        prediction = extract_choice_letter(response, len(choices))
        correct = prediction == target
        return Score(prediction=prediction, target=target, score=correct, correct=correct)

    @staticmethod
    def _choices(sample: Sample) -> list[str]:
        choices = sample_choices(sample)
        if isinstance(choices, str):
            # validate_sample runs before any request, so reaching this is a caller bug; fail loudly
            # (the runner records it as a sample error) instead of scoring against nothing.
            raise ValueError(f"row {sample.row}: {choices}")
        return choices
