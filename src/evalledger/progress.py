"""Progress on stderr: a tqdm bar on a terminal, a plain status line every N seconds otherwise.

Only acknowledged (fsynced) records are counted, so what the display says is done is done.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class Progress:
    """Counts acknowledged samples and shows them."""

    def __init__(
        self,
        total: int,
        already_done: int,
        *,
        quiet: bool = False,
        interval: float = 10.0,
        stream: TextIO | None = None,
        label: str = "",
    ) -> None:
        self.total = total
        self.initial = already_done
        self.ok = 0
        self.errors = 0
        self.correct = 0
        self.quiet = quiet
        self.interval = interval
        self.stream = stream or sys.stderr
        self.label = label
        self.started = time.monotonic()
        self._last_line = self.started
        self._bar: Any = None
        if not quiet and _isatty(self.stream):
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=already_done, file=self.stream, desc=label or None,
                             unit="sample", dynamic_ncols=True, leave=True)

    @property
    def done(self) -> int:
        return self.initial + self.ok + self.errors

    def update(self, records: list[dict[str, Any]]) -> None:
        """Count records that were just acknowledged."""
        for r in records:
            if r.get("status") == "ok":
                self.ok += 1
                self.correct += 1 if r.get("correct") is True else 0
            else:
                self.errors += 1
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix(), refresh=False)
            self._bar.update(len(records))
            return
        now = time.monotonic()
        if now - self._last_line >= self.interval:
            self._last_line = now
            self.line()

    def _postfix(self) -> str:
        acc = f"{self.correct / self.ok:.1%}" if self.ok else "-"
        return f"ok={self.ok} err={self.errors} acc={acc}"

    def line(self) -> None:
        """Print one plain status line (non-TTY mode)."""
        if self.quiet:
            return
        elapsed = time.monotonic() - self.started
        rate = (self.ok + self.errors) / elapsed if elapsed > 0 else 0.0
        remaining = self.total - self.done
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "?"
        print(
            f"[evalledger] {self.label} {self.done}/{self.total} {self._postfix()} "
            f"rate={rate:.2f}/s eta={eta}",
            file=self.stream,
            flush=True,
        )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
