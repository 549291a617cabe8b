"""Error classes shared by the library and the CLI.

Every error a user can cause (bad dataset, bad flag, config drift, a held lock, a provider that
refuses our credentials) is an :class:`EvalLedgerError` with a message that names the file, row or
flag at fault and an ``exit_code`` the CLI returns. Anything else is a bug.
"""

from __future__ import annotations


class EvalLedgerError(Exception):
    """Base class: a clear, user-facing failure with a process exit code."""

    exit_code: int = 2

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if exit_code is not None:
            self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message


class UsageError(EvalLedgerError):
    """A flag or argument is invalid (e.g. ``--shard 5/4``)."""


class DatasetError(EvalLedgerError):
    """The dataset is missing, unreadable, empty or has invalid rows."""


class ConfigDriftError(EvalLedgerError):
    """An existing run's manifest disagrees with the identity fields of this invocation."""


class RunExistsError(EvalLedgerError):
    """``--no-resume`` was asked for a run that already has results."""


class LockHeldError(EvalLedgerError):
    """Another process holds the lock on this run (or shard)."""


class FatalProviderError(EvalLedgerError):
    """The provider refused in a way no retry fixes (401, 403, 404 model not found, bad URL)."""


class DiskSpaceError(EvalLedgerError):
    """Not enough free space for the run, or the disk refused a write (exit 4)."""

    exit_code = 4


class LedgerCorruptError(EvalLedgerError):
    """A ledger file cannot be used (e.g. the manifest is not valid JSON)."""
