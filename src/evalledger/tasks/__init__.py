"""Tasks: how a dataset row becomes a prompt and how a response is scored.

Built-in tasks are looked up by name in :data:`BUILTIN_TASKS`; any other task is named on the
command line as ``package.module:ClassName`` (a :class:`Task` subclass constructible without
arguments) and loaded with :func:`load_task`.
"""

from __future__ import annotations

import importlib

from ..errors import UsageError
from .base import Generate, Message, Score, Task, TaskOutput
from .mcq import MCQTask
from .qa import QATask, extract_number_answer, normalize_number

__all__ = [
    "BUILTIN_TASKS",
    "Generate",
    "MCQTask",
    "Message",
    "QATask",
    "Score",
    "Task",
    "TaskOutput",
    "extract_number_answer",
    "load_task",
    "normalize_number",
]

BUILTIN_TASKS: dict[str, type[Task]] = {
    "qa": QATask,
    "mcq": MCQTask,
    # "self-correct" and "humaneval" are registered here when their modules exist.
}
"""Task name (as given to ``--task``) → task class."""


def load_task(spec: str) -> Task:
    """An instance of the task named by ``spec``.

    ``spec`` is a built-in name (a key of :data:`BUILTIN_TASKS`) or ``package.module:ClassName``
    naming a :class:`Task` subclass that takes no constructor arguments. Every failure is a
    :class:`~evalledger.errors.UsageError` naming ``--task``, raised before any request is sent.
    """
    spec = spec.strip()
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
