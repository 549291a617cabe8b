"""Tasks: how a dataset row becomes a prompt and how a response is scored.

Built-in tasks are looked up by name in :data:`BUILTIN_TASKS`; any other task is named on the
command line as ``package.module:ClassName`` (a :class:`Task` subclass constructible without
arguments) and loaded with :func:`load_task`.

``self-correct`` wraps another task: ``self-correct:BASE`` names the base task (any other spec),
plain ``self-correct`` takes the dataset's default task, which the caller passes to
:func:`load_task` as ``default_base`` (``prepare_run`` does).
"""

from __future__ import annotations

import importlib

from evalledger.errors import UsageError
from evalledger.tasks.base import Generate, Message, Score, Task, TaskOutput
from evalledger.tasks.humaneval import HumanEvalTask
from evalledger.tasks.mcq import MCQTask
from evalledger.tasks.qa import QATask, extract_number_answer, normalize_number
from evalledger.tasks.self_correct import SELF_CORRECT, SelfCorrectTask

__all__ = [
    "BUILTIN_TASKS",
    "Generate",
    "HumanEvalTask",
    "MCQTask",
    "Message",
    "QATask",
    "Score",
    "SelfCorrectTask",
    "Task",
    "TaskOutput",
    "extract_number_answer",
    "load_task",
    "normalize_number",
]

BUILTIN_TASKS: dict[str, type[Task]] = {
    "qa": QATask,
    "mcq": MCQTask,
    "humaneval": HumanEvalTask,
    # Constructed with no arguments it wraps qa; load_task gives it the base the spec names.
    SELF_CORRECT: SelfCorrectTask,
}
"""Task name (as given to ``--task``) → task class."""


def load_task(spec: str, *, default_base: str | None = None, review_prompt: str | None = None) -> Task:
    """An instance of the task named by ``spec``.

    ``spec`` is a built-in name (a key of :data:`BUILTIN_TASKS`) or ``package.module:ClassName``
    naming a :class:`Task` subclass that takes no constructor arguments. Every failure is a
    :class:`~evalledger.errors.UsageError` naming ``--task``, raised before any request is sent.

    ``self-correct:BASE`` wraps the task BASE; plain ``self-correct`` wraps ``default_base`` (the
    dataset's default task; ``qa`` when None). ``review_prompt`` replaces the self-correct review
    prompt's text and is refused for any other task.
    """
    spec = spec.strip()
    if spec == SELF_CORRECT or spec.startswith(SELF_CORRECT + ":"):
        return _load_self_correct(spec, default_base, review_prompt)
    if review_prompt is not None:
        raise UsageError(f"--review-prompt only applies to --task {SELF_CORRECT} (this run's task is {spec!r})")
    if spec in BUILTIN_TASKS:
        return BUILTIN_TASKS[spec]()

    builtins = ", ".join(sorted(BUILTIN_TASKS))
    if ":" not in spec:
        raise UsageError(
            f"--task {spec!r}: unknown task. Built-in tasks: {builtins}; "
            f"or give a custom task as 'package.module:ClassName'."
        )

    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name or ":" in class_name:
        raise UsageError(
            f"--task {spec!r}: a custom task must be written 'package.module:ClassName' "
            f"(built-in tasks: {builtins})."
        )

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"--task {spec!r}: cannot import module {module_name!r}: {exc}. "
            f"Is it installed or on PYTHONPATH?"
        ) from exc
    except Exception as exc:  # a bug in the user's module: report it instead of a traceback
        raise UsageError(
            f"--task {spec!r}: importing module {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc

    try:
        task_class = getattr(module, class_name)
    except AttributeError:
        raise UsageError(
            f"--task {spec!r}: module {module_name!r} has no attribute {class_name!r}."
        ) from None

    if not (isinstance(task_class, type) and issubclass(task_class, Task)):
        raise UsageError(
            f"--task {spec!r}: {module_name}.{class_name} is not a subclass of "
            f"evalledger.tasks.base.Task (got {task_class!r})."
        )

    try:
        return task_class()
    except Exception as exc:  # abstract methods left unimplemented, required __init__ args, ...
        raise UsageError(
            f"--task {spec!r}: cannot create {module_name}.{class_name}() with no arguments: "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _load_self_correct(spec: str, default_base: str | None, review_prompt: str | None) -> Task:
    """``self-correct`` / ``self-correct:BASE`` → a :class:`SelfCorrectTask` around BASE."""
    base_spec = spec[len(SELF_CORRECT) + 1:].strip() if ":" in spec else (default_base or "qa").strip()
    if not base_spec:
        raise UsageError(f"--task {spec!r}: name the base task after the colon, e.g. {SELF_CORRECT}:mcq")
    if base_spec == SELF_CORRECT or base_spec.startswith(SELF_CORRECT + ":"):
        raise UsageError(f"--task {spec!r}: {SELF_CORRECT} cannot wrap itself; give a base task such as qa or mcq")
    try:
        base = load_task(base_spec)
    except UsageError as exc:
        raise UsageError(f"--task {spec!r}: the base task could not be loaded: {exc.message}") from exc
    try:
        return SelfCorrectTask(base, review_prompt=review_prompt)
    except ValueError as exc:  # an empty review prompt file
        raise UsageError(f"--review-prompt: {exc}") from exc
