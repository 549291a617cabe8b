"""Tests for the built-in tasks (qa, mcq), the task registry and ``Task.run``.

Dataset rows are copied verbatim from ``shared/data/gsm8k_test.jsonl`` and
``shared/data/mmlu_elementary_mathematics_test.jsonl``; the model responses are written by hand
in the styles real models produce.
"""

from __future__ import annotations

import asyncio
import random
import textwrap

import pytest

from evalledger.errors import UsageError
from evalledger.samples import Sample, sample_rng
from evalledger.tasks import (
    BUILTIN_TASKS,
    MCQTask,
    QATask,
    Score,
    Task,
    TaskOutput,
    extract_number_answer,
    load_task,
    normalize_number,
)
from evalledger.tasks.mcq import answer_letter, extract_choice_letter, sample_choices
from evalledger.tasks.qa import numbers_equal

# --- real rows ------------------------------------------------------------------------------

GSM8K_JANET = {  # gsm8k_test.jsonl line 1
    "question": (
        "Janet\u2019s ducks lay 16 eggs per day. She eats three for breakfast every morning and "
        "bakes muffins for her friends every day with four. She sells the remainder at the "
        "farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every "
        "day at the farmers' market?"
    ),
    "answer": (
        "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\nShe makes 9 * 2 = "
        "$<<9*2=18>>18 every day at the farmer\u2019s market.\n#### 18"
    ),
}
GSM8K_JOSH = {  # line 3: a dollar answer in the tens of thousands
    "question": (
        "Josh decides to try flipping a house.  He buys a house for $80,000 and then puts in "
        "$50,000 in repairs.  This increased the value of the house by 150%.  How much profit "
        "did he make?"
    ),
    "answer": (
        "The cost of the house and repairs came out to "
        "80,000+50,000=$<<80000+50000=130000>>130,000\nHe increased the value of the house by "
        "80,000*1.5=<<80000*1.5=120000>>120,000\nSo the new value of the house is "
        "120,000+80,000=$<<120000+80000=200000>>200,000\nSo he made a profit of "
        "200,000-130,000=$<<200000-130000=70000>>70,000\n#### 70000"
    ),
}
GSM8K_TEMPERATURE = {  # line 490: a negative answer
    "question": (
        "The highest temperature ever recorded in Southlandia is -48 degrees Fahrenheit. The "
        "highest temperature ever recorded in Northlandia is 21 degrees Fahrenheit. The highest "
        "temperature recorded in Midlandia is -3 degrees Fahrenheit. What is the average highest "
        "temperature of these 3 countries?"
    ),
    "answer": (
        "-48 + 21 + (-3) = <<-48+21+(-3)=-30>>-30\n-30/3 = <<-30/3=-10>>-10 degrees\nThe "
        "average highest temperature recorded in Southlandia, Northlandia, and Midlandia is -10 "
        "degrees Fahrenheit.\n#### -10"
    ),
}
GSM8K_LEGO_ANSWER = (  # line 147: the reference itself writes the target with a comma
    "The first set had 500 pieces, and the second set had 3 times as many as the first set, so "
    "the second set has 500*3=<<500*3=1500>>1500 pieces\nThe third set had one-quarter of the "
    "500 pieces, so that means it had 500*.25= <<500*.25=125>>125 pieces\nIn total, that means "
    "Johnny picked up 500 + 1500+ 125= <<500+1500+125=2125>>2125 blocks\n#### 2,125"
)

MMLU_P = {  # mmlu_elementary_mathematics_test.jsonl line 1
    "id": "mmlu-elementary_mathematics-test-0000",
    "question": "What is the value of p in 24 = 2p?",
    "choices": ["p = 4", "p = 8", "p = 12", "p = 24"],
    "answer": "C",
}
MMLU_SOCCER = {  # line 4: numeric choices
    "id": "mmlu-elementary_mathematics-test-0003",
    "question": (
        "A soccer team has $90.00 to buy soccer balls. If one soccer ball costs $15.60, what is "
        "the greatest number of soccer balls the team can buy?"
    ),
    "choices": ["4", "5", "6", "7"],
    "answer": "B",
}
MMLU_QUOTIENT = {  # line 3: Unicode minus signs in question and choices
    "id": "mmlu-elementary_mathematics-test-0002",
    "question": "Find the quotient of \u221240 \u00f7 (\u22128).",
    "choices": ["1 over 5", "\u22125", "\u22121 over 5", "5"],
    "answer": "D",
}
# The same item as MMLU_P in the original headerless CSV shape (question, A, B, C, D, answer).
MMLU_P_CSV = {
    "question": "What is the value of p in 24 = 2p?",
    "A": "p = 4",
    "B": "p = 8",
    "C": "p = 12",
    "D": "p = 24",
    "answer": "C",
}


def sample(fields: dict, row: int = 1, sid: str = "s1") -> Sample:
    return Sample(id=sid, row=row, fields=dict(fields))


# --- qa: numbers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("18", "18"),
        ("18.00", "18"),
        ("0.50", "0.5"),
        ("1,000", "1000"),
        ("$1,080.", "1080"),
        ("-10", "-10"),
        ("\u22123", "-3"),  # Unicode minus
        ("-$5", "-5"),
        ("$-5", "-5"),
        ("12.5%", "12.5"),
        (" **42** ", "42"),
        ("100", "100"),  # not "1E+2"
        ("-0", "0"),
        ("3/4", None),  # fractions are out of scope, not silently 3 or 4
        ("eighteen", None),
        ("1e5", None),
        ("NaN", None),
        ("Infinity", None),
        ("--5", None),
        ("", None),
    ],
)
def test_normalize_number(text: str, expected: str | None) -> None:
    assert normalize_number(text) == expected


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # the requested format, after reasoning full of other numbers
        (
            "Janet has 16 - 3 - 4 = 9 eggs left. She sells them for $2 each, 9 * 2 = 18.\n#### 18",
            "18",
        ),
        ("The profit is 200,000 - 130,000 = 70,000 dollars.\n#### $70,000", "70000"),
        ("#### 18.00", "18"),
        # the last #### wins when the model corrects itself
        ("First try:\n#### 16\nWait, she also bakes with four.\n#### 9", "9"),
        # an empty #### line does not hide a later statement
        ("####\nThe answer is 5", "5"),
        # "the answer is", with currency, thousands separator and a trailing period
        ("She makes 9 * 2 = 18 dollars. The answer is $1,080.", "1080"),
        ("The final answer is: **-10** degrees.", "-10"),
        ("Average = (-48 + 21 - 3) / 3 = -30 / 3.\nThe answer is \u221210", "-10"),
        ("Answer: 70000", "70000"),
        # LaTeX-style models
        ("Therefore the final answer is $\\boxed{18}$. I hope it is correct.", "18"),
        ("9 \\times 2 = 18, so she earns \\boxed{18} dollars, not 20.", "18"),
        # fallback: last number in the text
        ("16 - 3 - 4 = 9 eggs, and 9 x 2 = 18", "18"),
        ("So she makes $18.", "18"),
        ("Start at 2, drop 8 to -6, then rise 3: it is -3 degrees", "-3"),
        # a hyphen between numbers is a dash, not a sign
        ("It lasted 2-8 days", "8"),
        # GSM8K-style calculator annotations copied from few-shot examples
        ("9 * 2 = $<<9*2=18>>18 every day", "18"),
        # nothing numeric at all
        ("I'm sorry, I cannot solve this problem.", None),
        ("", None),
        ("It is three quarters, 3/4.", None),
    ],
)
def test_extract_number_answer(response: str, expected: str | None) -> None:
    assert extract_number_answer(response) == expected


@pytest.mark.parametrize(
    ("a", "b", "equal"),
    [
        ("18.00", "18", True),
        ("$1,080", "1080.0", True),
        ("-10", "10", False),
        ("0.5", ".50", True),
        ("18", "18.01", False),
        (None, "18", False),
        ("18", None, False),
        ("eighteen", "eighteen", False),  # not numbers, so never "equal" answers
    ],
)
def test_numbers_equal(a: str | None, b: str | None, equal: bool) -> None:
    assert numbers_equal(a, b) is equal


# --- qa: task ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "response", "prediction", "correct"),
    [
        (GSM8K_JANET, "16 - 3 - 4 = 9 eggs; 9 * $2 = $18.\n#### 18", "18", True),
        (GSM8K_JANET, "She makes 9 * 2 = 18 dollars per day.\n#### 18.00", "18", True),
        (GSM8K_JANET, "16 - 3 = 13 eggs, 13 * 2 = 26.\n#### 26", "26", False),
        (GSM8K_JANET, "She makes \\boxed{18} dollars a day.", "18", True),
        (GSM8K_JANET, "I don't know.", None, False),
        (
            GSM8K_JOSH,
            "Total cost: $80,000 + $50,000 = $130,000. New value: $80,000 * 2.5 = $200,000. "
            "Profit: $200,000 - $130,000 = $70,000. The answer is $70,000.",
            "70000",
            True,
        ),
        # reading 150% as the new value instead of the increase: a realistic wrong answer
        (
            GSM8K_JOSH,
            "New value = 1.5 * 80,000 = 120,000, profit = 120,000 - 130,000 = -10,000.\n"
            "#### -10000",
            "-10000",
            False,
        ),
        (GSM8K_TEMPERATURE, "(-48 + 21 + -3) / 3 = -30 / 3 = -10\n#### -10", "-10", True),
        (GSM8K_TEMPERATURE, "(48 + 21 + 3) / 3 = 24\n#### 24", "24", False),
        ({"question": "q", "answer": GSM8K_LEGO_ANSWER}, "#### 2125", "2125", True),
    ],
)
def test_qa_score(fields: dict, response: str, prediction: str | None, correct: bool) -> None:
    result = QATask().score(response, sample(fields))
    assert result.prediction == prediction
    assert result.correct is correct
    assert result.score is correct
    assert result.target == normalize_number(fields["answer"].rsplit("####", 1)[-1])


def test_qa_target_without_hashes_is_the_whole_field() -> None:
    result = QATask().score("#### 1080", sample({"question": "q", "answer": " 1,080 "}))
    assert result.target == "1080"
    assert result.correct is True


def test_qa_build_messages() -> None:
    messages = QATask().build_messages(sample(GSM8K_JANET))
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "step by step" in messages[0]["content"]
    assert "#### <number>" in messages[0]["content"]
    assert messages[1]["content"] == GSM8K_JANET["question"]
    # the reference solution must never leak into the prompt
    assert all("<<9*2=18>>" not in m["content"] for m in messages)


def test_qa_identity_fields() -> None:
    task = QATask()
    assert task.name == "qa"
    assert task.prompt_version.startswith("qa-v")
    assert task.required_fields == ("question", "answer")


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        ("She makes 18 dollars.\n#### eighteen", "no numeric final answer"),
        ("no number", "no numeric final answer"),
        (None, "no numeric final answer"),
    ],
)
def test_qa_validate_sample_problems(answer: object, problem: str) -> None:
    message = QATask().validate_sample(sample({"question": "q", "answer": answer}))
    assert message is not None and problem in message and "'answer'" in message


def test_qa_validate_sample_accepts_real_rows() -> None:
    for fields in (GSM8K_JANET, GSM8K_JOSH, GSM8K_TEMPERATURE):
        assert QATask().validate_sample(sample(fields)) is None


# --- mcq: extraction --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        # explicit statements
        ("24 = 2p, so p = 24 / 2 = 12.\nAnswer: C", "C"),
        ("Dividing both sides by 2 gives p = 12, so the answer is (C).", "C"),
        ("p = 12\n\nanswer: **C**", "C"),
        ("The correct answer is option D.", "D"),
        ("Final Answer: $\\boxed{B}$", "B"),
        # the last explicit statement wins over an earlier one
        ("Answer: B\nWait, 2 * 12 = 24, so\nAnswer: C", "C"),
        # lower-case "a" after "answer is" is prose, not option A
        ("The answer is a bit tricky: p = 12, which is option C", "C"),
        # just a letter
        ("B", "B"),
        ("(B)", "B"),
        ("B.", "B"),
        ("  **D**  ", "D"),
        ("A", "A"),
        # standalone letters
        ("p = 12 matches option C", "C"),
        ("I would pick C) p = 12", "C"),
        ("A train leaves at 3 pm and arrives at 5 pm; that is like option D", "D"),
        ("I think the right one is (A).", "A"),
        ("A. p = 4", "A"),
        ("We pick option A here", "A"),
        # "A" and "I" in prose are not option references
        ("A train leaves the station at noon.", None),
        ("I am not sure.", None),
        # out-of-range letters are ignored (only A-D exist here)
        ("Answer: E", None),
        ("I cannot determine which option is correct.", None),
        ("", None),
    ],
)
def test_extract_choice_letter(response: str, expected: str | None) -> None:
    assert extract_choice_letter(response, 4) == expected


def test_extract_choice_letter_respects_number_of_choices() -> None:
    assert extract_choice_letter("Answer: E", 5) == "E"
    assert extract_choice_letter("Answer: E", 4) is None
    # with ten options "I" is a valid letter, but still not when it is the English pronoun
    assert extract_choice_letter("I think so. Answer: I", 10) == "I"
    assert extract_choice_letter("I think it is the last one", 10) is None


# --- mcq: task --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "response", "prediction", "correct"),
    [
        (MMLU_P, "24 = 2p, so p = 12.\nAnswer: C", "C", True),
        (MMLU_P, "p = 24 / 2 = 12, the answer is (C)", "C", True),
        (MMLU_P, "Dividing 24 by 2 gives 8? No. Answer: B", "B", False),
        (MMLU_P, "I'm not sure about this one.", None, False),
        (MMLU_P_CSV, "Answer: C", "C", True),
        (MMLU_SOCCER, "90 / 15.60 = 5.77, so 5 balls.\nAnswer: B", "B", True),
        (MMLU_SOCCER, "90 / 15.60 is about 5.8, round up to 6.\nAnswer: C", "C", False),
        (MMLU_QUOTIENT, "\u221240 \u00f7 (\u22128) = 5, a positive number.\nAnswer: D", "D", True),
        # the same item with the answer as a 0-based index (Hugging Face cais/mmlu) or as text
        ({**MMLU_P, "answer": 2}, "Answer: C", "C", True),
        ({**MMLU_P, "answer": "p = 12"}, "Answer: C", "C", True),
        ({**MMLU_SOCCER, "answer": "5"}, "Answer: B", "B", True),
    ],
)
def test_mcq_score(fields: dict, response: str, prediction: str | None, correct: bool) -> None:
    result = MCQTask().score(response, sample(fields))
    assert result.prediction == prediction
    assert result.correct is correct
    assert result.score is correct
    assert result.target in "ABCD"


@pytest.mark.parametrize("fields", [MMLU_P, MMLU_P_CSV])
def test_mcq_build_messages(fields: dict) -> None:
    messages = MCQTask().build_messages(sample(fields))
    assert [m["role"] for m in messages] == ["user"]
    content = messages[0]["content"]
    assert content.startswith("What is the value of p in 24 = 2p?")
    for line in ("A. p = 4", "B. p = 8", "C. p = 12", "D. p = 24"):
        assert line in content.splitlines()
    assert "Answer: X" in content
    assert "E." not in content


def test_mcq_build_messages_keeps_choice_order_and_unicode() -> None:
    content = MCQTask().build_messages(sample(MMLU_QUOTIENT))[0]["content"]
    lines = content.splitlines()
    option_lines = [line for line in lines if line[:2] in ("A.", "B.", "C.", "D.")]
    assert option_lines == ["A. 1 over 5", "B. \u22125", "C. \u22121 over 5", "D. 5"]


@pytest.mark.parametrize(
    ("answer", "choices", "expected"),
    [
        ("C", ["w", "x", "y", "z"], "C"),
        ("c", ["w", "x", "y", "z"], "C"),
        (2, ["w", "x", "y", "z"], "C"),
        (2.0, ["w", "x", "y", "z"], "C"),  # pandas reads an int column with gaps as float
        ("2", ["w", "x", "y", "z"], "C"),  # an index column read as text
        ("y", ["w", "x", "y", "z"], "C"),
        ("5", ["4", "5", "6", "7"], "B"),  # choice text wins; index 5 does not exist
        ("1", ["1", "2", "3", "4"], None),  # text says A, index says B: refuse to guess
        ("E", ["w", "x", "y", "z"], None),
        (4, ["w", "x", "y", "z"], None),
        (-1, ["w", "x", "y", "z"], None),
        (True, ["w", "x", "y", "z"], None),
        ("v", ["w", "x", "y", "z"], None),
        ("x", ["x", "x", "y", "z"], None),  # duplicate choice texts
    ],
)
def test_answer_letter(answer: object, choices: list[str], expected: str | None) -> None:
    assert answer_letter(answer, choices) == expected


def test_sample_choices_csv_columns_stop_at_first_missing() -> None:
    fields = {**MMLU_P_CSV, "E": float("nan")}
    assert sample_choices(sample(fields)) == ["p = 4", "p = 8", "p = 12", "p = 24"]


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"question": "q", "answer": "A"}, "expected a 'choices' list or columns 'A', 'B'"),
        ({"question": "q", "choices": [], "answer": "A"}, "'choices' is empty"),
        ({"question": "q", "choices": "p = 4; p = 8", "answer": "A"}, "must be a list"),
        ({"question": "q", "choices": ["x"] * 11, "answer": "A"}, "at most 10"),
        ({"question": "q", "choices": ["x", None], "answer": "A"}, "empty option(s) B"),
        ({**MMLU_P, "answer": "E"}, "'answer' = 'E' does not identify"),
        ({**MMLU_P, "answer": 7}, "0-based index 0-3"),
        ({**MMLU_P, "answer": "p = 13"}, "does not identify"),
        ({**MMLU_P_CSV, "answer": "F"}, "letter A-D"),
    ],
)
def test_mcq_validate_sample_problems(fields: dict, problem: str) -> None:
    message = MCQTask().validate_sample(sample(fields))
    assert message is not None
    assert problem in message


@pytest.mark.parametrize("fields", [MMLU_P, MMLU_SOCCER, MMLU_QUOTIENT, MMLU_P_CSV])
def test_mcq_validate_sample_accepts_real_rows(fields: dict) -> None:
    assert MCQTask().validate_sample(sample(fields)) is None


def test_mcq_score_refuses_an_unvalidated_row() -> None:
    with pytest.raises(ValueError, match="row 7"):
        MCQTask().score("Answer: A", sample({"question": "q", "answer": "A"}, row=7))


# --- registry -------------------------------------------------------------------------------


def test_builtin_tasks_registry() -> None:
    from evalledger.tasks import HumanEvalTask, SelfCorrectTask

    assert BUILTIN_TASKS == {"qa": QATask, "mcq": MCQTask, "humaneval": HumanEvalTask, "self-correct": SelfCorrectTask}
    assert isinstance(load_task("humaneval"), HumanEvalTask)
    wrapped = load_task("self-correct:mcq")
    assert isinstance(wrapped, SelfCorrectTask) and isinstance(wrapped.base, MCQTask)
    assert isinstance(load_task("qa"), QATask)
    assert isinstance(load_task("mcq"), MCQTask)
    assert load_task("qa") is not load_task("qa")  # a fresh instance each time


CUSTOM_TASK_SOURCE = textwrap.dedent(
    """
    from evalledger.tasks.base import Score, Task

    class EchoTask(Task):
        name = "echo"
        prompt_version = "echo-v1"
        required_fields = ("text",)

        def build_messages(self, sample):
            return [{"role": "user", "content": sample["text"]}]

        def score(self, response, sample):
            ok = response == sample["text"]
            return Score(prediction=response, target=sample["text"], score=ok, correct=ok)

    class Abstract(Task):
        pass

    class NeedsArgs(EchoTask):
        def __init__(self, level):
            self.level = level

    class NotATask:
        pass

    def make_task():
        return EchoTask()
    """
)


@pytest.fixture
def custom_module(tmp_path, monkeypatch) -> str:
    """A module on sys.path holding task classes; a unique name per test avoids sys.modules reuse."""
    name = f"custom_tasks_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(CUSTOM_TASK_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


def test_load_task_custom_class(custom_module: str) -> None:
    task = load_task(f"{custom_module}:EchoTask")
    assert isinstance(task, Task)
    assert task.name == "echo"
    result = task.score("hi", sample({"text": "hi"}))
    assert result.correct is True


@pytest.mark.parametrize(
    ("spec", "fragments"),
    [
        ("gsm8k", ["--task 'gsm8k'", "unknown task", "mcq, qa", "package.module:ClassName"]),
        ("no_such_module_xyz:Task", ["--task", "cannot import module 'no_such_module_xyz'", "No module named"]),
        (":EchoTask", ["--task", "package.module:ClassName"]),
        ("evalledger.tasks.qa:", ["--task", "package.module:ClassName"]),
        ("evalledger.tasks.qa:NoSuchTask", ["--task", "has no attribute 'NoSuchTask'"]),
        ("evalledger.tasks.qa:normalize_number", ["--task", "is not a subclass of", "Task"]),
        ("evalledger.tasks.qa:SYSTEM_PROMPT", ["is not a subclass of"]),
    ],
)
def test_load_task_errors(spec: str, fragments: list[str]) -> None:
    with pytest.raises(UsageError) as info:
        load_task(spec)
    for fragment in fragments:
        assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("attribute", "fragment"),
    [
        ("NotATask", "is not a subclass of"),
        ("make_task", "is not a subclass of"),
        ("Abstract", "cannot create"),
        ("NeedsArgs", "cannot create"),
        ("Missing", "has no attribute 'Missing'"),
    ],
)
def test_load_task_custom_errors(custom_module: str, attribute: str, fragment: str) -> None:
    with pytest.raises(UsageError) as info:
        load_task(f"{custom_module}:{attribute}")
    assert fragment in str(info.value)
    assert "--task" in str(info.value)


def test_load_task_module_that_fails_to_import(tmp_path, monkeypatch) -> None:
    (tmp_path / "broken_task_module.py").write_text("import no_such_dependency_abc\n")
    (tmp_path / "crashing_task_module.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UsageError) as info:
        load_task("broken_task_module:T")
    # the message names the module asked for and the dependency that is really missing
    assert "'broken_task_module'" in str(info.value)
    assert "no_such_dependency_abc" in str(info.value)
    with pytest.raises(UsageError, match="RuntimeError: boom at import"):
        load_task("crashing_task_module:T")


# --- Task.run -------------------------------------------------------------------------------


class FakeModel:
    """An async ``generate`` that records what it was sent and replies with a fixed text."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.calls: list[list[dict[str, str]]] = []

    async def __call__(self, messages: list[dict[str, str]]) -> str:
        self.calls.append(messages)
        await asyncio.sleep(0)  # a real suspension point, as with an HTTP request
        return self.reply


@pytest.mark.parametrize(
    ("task", "fields", "reply", "prediction", "correct"),
    [
        (QATask(), GSM8K_JANET, "9 eggs * $2 = $18\n#### 18", "18", True),
        (QATask(), GSM8K_JANET, "#### 26", "26", False),
        (MCQTask(), MMLU_P, "p = 12\nAnswer: C", "C", True),
        (MCQTask(), MMLU_P, "Answer: D", "D", False),
    ],
)
def test_task_run_one_turn(task: Task, fields: dict, reply: str, prediction: str, correct: bool) -> None:
    model = FakeModel(reply)
    s = sample(fields, sid="row-1")
    output = asyncio.run(task.run(s, model, sample_rng(0, s.id)))

    assert isinstance(output, TaskOutput)
    assert len(model.calls) == 1
    assert model.calls[0] == task.build_messages(s)
    assert output.messages == model.calls[0]
    assert output.responses == [reply]
    assert isinstance(output.score, Score)
    assert output.score.prediction == prediction
    assert output.score.correct is correct


def test_task_run_propagates_generate_errors() -> None:
    # the runner, not the task, turns request failures into error records; the task must not
    # swallow them into a wrong answer (DESIGN: errors never become a score of 0)
    async def failing(messages: list[dict[str, str]]) -> str:
        raise ConnectionError("connection reset")

    with pytest.raises(ConnectionError):
        asyncio.run(QATask().run(sample(GSM8K_JANET), failing, random.Random(0)))


# --- worked examples (--fewshot) ----------------------------------------------------------------

COT_OLIVIA = {  # gsm8k_cot_exemplars.jsonl line 8
    "id": "gsm8k-cot-0007",
    "question": "Olivia has $23. She bought five bagels for $3 each. How much money does she have left?",
    "target": ("Olivia had 23 dollars. 5 bagels for 3 dollars each will be 5 x 3 = 15 dollars. So she has "
               "23 - 15 dollars left. 23 - 15 is 8. The answer is 8."),
    "answer": "8",
}


def test_qa_puts_exemplar_pairs_between_the_system_prompt_and_the_question() -> None:
    task = QATask()
    shown = sample(GSM8K_JANET, sid="janet")
    asked = Sample("josh", 3, GSM8K_JOSH, fewshot=(sample(COT_OLIVIA, sid="cot"), shown))
    messages = task.build_messages(asked)
    assert messages == [
        task.build_messages(sample(GSM8K_JOSH))[0],
        {"role": "user", "content": COT_OLIVIA["question"]},
        {"role": "assistant", "content": COT_OLIVIA["target"]},  # a worked target wins over the bare answer
        {"role": "user", "content": GSM8K_JANET["question"]},
        {"role": "assistant", "content": GSM8K_JANET["answer"]},  # GSM8K's own solution, "#### 18"
        {"role": "user", "content": GSM8K_JOSH["question"]},
    ]
    assert task.build_messages(sample(GSM8K_JOSH)) == [messages[0], messages[-1]]  # zero-shot unchanged


def test_mcq_exemplars_are_formatted_like_the_question_and_answered_in_its_format() -> None:
    task = MCQTask()
    asked = Sample("p", 1, MMLU_P, fewshot=(sample(MMLU_SOCCER, sid="soccer"),))
    messages = task.build_messages(asked)
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]
    assert messages[0] == task.build_messages(sample(MMLU_SOCCER))[0]
    assert messages[1] == {"role": "assistant", "content": f"Answer: {MMLU_SOCCER['answer']}"}
    assert messages[2] == task.build_messages(sample(MMLU_P))[0]
    # The same question with its options reordered is the sample itself.
    reordered = {**MMLU_P, "choices": list(reversed(MMLU_P["choices"])), "answer": "B"}
    assert task.exemplar_key(sample(reordered)) == task.exemplar_key(sample(MMLU_P))


def test_self_correct_first_turn_is_the_base_prompt_with_its_exemplars() -> None:
    task = load_task("self-correct:mcq")
    asked = Sample("p", 1, MMLU_P, fewshot=(sample(MMLU_SOCCER, sid="soccer"),))
    assert task.build_messages(asked) == MCQTask().build_messages(asked)
    assert task.exemplar_version == MCQTask.exemplar_version and task.exemplar_answer(asked.fewshot[0]) == "Answer: B"
    assert task.review_messages(asked, "Answer: C")[:3] == task.build_messages(asked)


@pytest.mark.parametrize(("task", "fields", "reply", "prediction"), [
    (QATask(), COT_OLIVIA, "She has 23 - 15 dollars left. 23 - 15 is 8. The answer is 8.", "8"),
    (QATask(), GSM8K_JANET, "9 eggs a day, 9 * 2 = 18 dollars.\n#### 18", "18"),
    (MCQTask(), MMLU_SOCCER, "90 / 15.60 is about 5.8, so 5 balls.\nAnswer: B", "B"),
])
def test_a_reply_in_the_exemplars_format_is_read(task: Task, fields: dict, reply: str, prediction: str) -> None:
    result = task.score(reply, sample(fields))
    assert result.prediction == prediction and result.correct is True
    assert task.validate_exemplar(sample(fields)) is None


@pytest.mark.parametrize(("task", "fields", "problem"), [
    (QATask(), {**COT_OLIVIA, "target": "So she has 9 left. The answer is 9."}, "does not score as correct"),
    (QATask(), {"question": "q", "answer": "no number"}, "no numeric final answer"),
    (MCQTask(), {**MMLU_P, "answer": "E"}, "does not identify exactly one"),
])
def test_validate_exemplar_problems(task: Task, fields: dict, problem: str) -> None:
    message = task.validate_exemplar(sample(fields))
    assert message is not None and problem in message


def test_a_task_without_exemplar_support_says_so() -> None:
    class Bare(Task):
        name = "bare"

        def build_messages(self, sample):
            return [{"role": "user", "content": "q"}]

        def score(self, response, sample):
            return Score(prediction=None, target=None, score=False, correct=False)

    assert Bare.exemplar_version == "" and QATask.exemplar_version and MCQTask.exemplar_version
    with pytest.raises(NotImplementedError, match="bare cannot show worked examples"):
        Bare().exemplar_answer(sample({"question": "q"}))
