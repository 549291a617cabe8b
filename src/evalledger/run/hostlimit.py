"""Rate limits shared by the processes of one host: the ``--rpm``/``--tpm`` buckets, the storm's pause
and the concurrency cuts, in a small memory-mapped file that every process locks with ``flock``
around each read-modify-write (a few microseconds a request).

Who shares one:

* the worker processes of a ``--workers N`` run: the parent makes a private limiter for the run
  and hands its name to each worker, so the flags keep meaning the key's limits;
* opt-in, independent runs on one host against one key: every process started with
  ``EVALLEDGER_HOST_LIMITER=NAME`` in its environment shares the limiter ``NAME`` (say, the Slurm
  array tasks that land on one node). They must be given the same ``--rpm``/``--tpm``: a run whose
  limits differ from those of the processes already attached is refused.

What is shared, and what stays per process (see :class:`evalledger.run.limits.Limits`): the buckets
are one (a request reserves its tokens and sleeps until they exist, so the processes are served in
the order they asked); a storm's pause is one deadline every process waits out; a storm's halving of
the concurrency is a counter of cuts, and each process halves its own limit once per new cut, then
grows it back by its own successes. Which responses make a storm is judged by each process over its
own recent responses, so one process's 429s pause and slow them all.

The file lives in ``/dev/shm`` (else the temporary directory), named ``evalledger-<uid>-<NAME>.limiter``,
beside ``….attach``, on which every attached process holds a shared ``flock``: the first process to
attach to a limiter nobody holds (re)starts it with full buckets and its own limits. Time is
``time.monotonic()``, which on Linux is one clock for every process of the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import mmap
import os
import re
import secrets
import struct
import tempfile
import time
import weakref
from pathlib import Path
from typing import Callable, Iterator

from evalledger.errors import UsageError

#: The environment variable naming a limiter shared by independent runs on this host (opt-in).
HOST_LIMITER_ENV = "EVALLEDGER_HOST_LIMITER"

_MAGIC = b"evlim001"
# magic; per bucket (rpm, tpm): per-minute limit (0: none), tokens, last refill; pause_until; cuts; episode_end
_STATE = struct.Struct("<8s ddd ddd d q d")
_RPM, _TPM = 0, 1
_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,100}")
_PRIVATE_PREFIX = "run-"


def limiter_dir() -> Path:
    """Where limiters live: ``/dev/shm`` (memory, never written back) when usable, else the temporary directory."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else Path(tempfile.gettempdir())


def limiter_path(name: str) -> Path:
    """The state file of the limiter ``name`` (its ``.attach`` file is beside it)."""
    if not _NAME_RE.fullmatch(name):
        raise UsageError(f"{HOST_LIMITER_ENV}={name!r}: name a host limiter with letters, digits, '.', '_' and '-' "
                         "(at most 100)")
    return limiter_dir() / f"evalledger-{os.getuid()}-{name}.limiter"


def capacity_for(per_minute: float) -> float:
    """A bucket's capacity: ten seconds' worth, enough for bursts and small enough not to trip a
    provider's own window (the in-process :class:`~evalledger.run.limits.TokenBucket`'s rule too)."""
    return max(1.0, per_minute / 6.0)


def refill(tokens: float, elapsed: float, rate: float, capacity: float) -> float:
    """A bucket's tokens ``elapsed`` seconds later, refilled at ``rate`` a second up to ``capacity``
    (the rule of both buckets: in one process, :class:`~evalledger.run.limits.TokenBucket`, and shared here)."""
    return min(capacity, tokens + max(0.0, elapsed) * rate)


def wait_for(tokens: float, n: float, capacity: float, rate: float) -> float:
    """Seconds until a bucket holding ``tokens`` has ``n``: a request larger than the capacity waits
    for a full bucket (and then takes it into debt)."""
    need = min(n, capacity)
    return 0.0 if tokens >= need else (need - tokens) / rate


class HostLimiter:
    """One attachment to a host limiter (:meth:`attach`, :meth:`private`); :meth:`close` detaches."""

    def __init__(self, path: Path, rpm: float | None, tpm: float | None, *, owner: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        """Attach to the limiter at ``path`` with these limits (per minute; None: none).
        ``owner``: remove its files on :meth:`close` (a run's private limiter)."""
        self.path = path
        self.attach_path = path.with_name(path.name + ".attach")
        self.name = path.name.removeprefix(f"evalledger-{os.getuid()}-").removesuffix(".limiter")
        self.owner = owner
        self.clock = clock
        self.limits = (float(rpm or 0.0), float(tpm or 0.0))
        self._fd, self._attach_fd = self._open_locked()
        try:
            self._map = mmap.mmap(self._fd, _STATE.size)
            self._join()
        except BaseException:
            self._unlock()
            os.close(self._fd)
            os.close(self._attach_fd)
            raise
        self._unlock()
        self._finalizer = weakref.finalize(self, _close_fds, self._map, self._fd, self._attach_fd)

    # ----------------------------------------------------------------- attaching
    @classmethod
    def attach(cls, name: str, rpm: float | None, tpm: float | None) -> "HostLimiter":
        """Attach to the named limiter of this host (:data:`HOST_LIMITER_ENV`)."""
        return cls(limiter_path(name), rpm, tpm)

    @classmethod
    def private(cls, rpm: float | None, tpm: float | None) -> "HostLimiter":
        """A new limiter for one run's worker processes, removed on :meth:`close`; limiters of runs
        killed before they could remove theirs are removed first."""
        sweep_stale_limiters()
        return cls(limiter_path(f"{_PRIVATE_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"), rpm, tpm, owner=True)

    def _open_locked(self) -> tuple[int, int]:
        """Open the state file and hold its lock, making sure the file is still the one at ``path``
        (a sweep may have removed it between the open and the lock)."""
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        if os.fstat(fd).st_size < _STATE.size:
            os.ftruncate(fd, _STATE.size)
        return fd, os.open(self.attach_path, os.O_RDWR | os.O_CREAT, 0o600)

    def _join(self) -> None:
        """Under the state lock: start the limiter afresh if nobody is attached, else check that
        its limits are this process's; then hold the attach lock shared."""
        try:
            fcntl.flock(self._attach_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            alone = True
        except BlockingIOError:
            alone = False
        if alone:
            now = self.clock()
            rpm, tpm = self.limits
            self._write(_MAGIC, rpm, capacity_for(rpm), now, tpm, capacity_for(tpm), now, 0.0, 0, 0.0)
        else:
            state = self._read()
            theirs = (state[1], state[4])
            if state[0] != _MAGIC or theirs != self.limits:
                raise UsageError(
                    f"the host limiter {self.name} is in use by runs with {_describe(theirs)}; this run has "
                    f"{_describe(self.limits)}. Runs that share a limiter share one key's limits: give them the same "
                    f"--rpm/--tpm (or another {HOST_LIMITER_ENV} name)")
        # A conversion is not atomic, but every attach holds the state lock: nobody else looks meanwhile.
        fcntl.flock(self._attach_fd, fcntl.LOCK_SH)

    def close(self) -> None:
        """Detach (idempotent); a private limiter's files are removed."""
        if self._finalizer.detach() is None:
            return
        if self.owner:
            for p in (self.path, self.attach_path):
                p.unlink(missing_ok=True)
        _close_fds(self._map, self._fd, self._attach_fd)

    # ----------------------------------------------------------------- the shared state
    def _read(self) -> tuple:
        return _STATE.unpack_from(self._map, 0)

    def _write(self, *values: object) -> None:
        _STATE.pack_into(self._map, 0, *values)

    def _unlock(self) -> None:
        fcntl.flock(self._fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list]:
        """The state as a list to change in place, written back on exit, under the lock."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            state = list(self._read())
            yield state
            self._write(*state)
        finally:
            self._unlock()

    def _refill(self, state: list, bucket: int) -> tuple[float, float]:
        """Refill ``bucket`` to now; returns (capacity, rate per second)."""
        base = 1 + 3 * bucket
        per_minute = state[base]
        cap, rate = capacity_for(per_minute), per_minute / 60.0
        now = self.clock()
        state[base + 1] = refill(state[base + 1], now - state[base + 2], rate, cap)
        state[base + 2] = now
        return cap, rate

    def reserve(self, bucket: int, n: float, *, only_if_free: bool = False) -> float:
        """Take ``n`` tokens of ``bucket`` (:data:`_RPM`, :data:`_TPM`) and return the seconds until
        they exist: the caller sleeps that long, so requests go in the order they reserved. A request
        larger than the capacity waits for a full bucket and takes it into debt. ``only_if_free``:
        take them only if no wait is needed (returns the wait without taking otherwise)."""
        with self._locked() as state:
            cap, rate = self._refill(state, bucket)
            tokens = state[2 + 3 * bucket]
            wait = wait_for(tokens, n, cap, rate)
            if not (only_if_free and wait > 0):
                state[2 + 3 * bucket] = tokens - n
        return wait

    def wait_time(self, bucket: int, n: float) -> float:
        """Seconds until ``n`` tokens of ``bucket`` would exist (nothing taken)."""
        with self._locked() as state:
            cap, rate = self._refill(state, bucket)
            return wait_for(state[2 + 3 * bucket], n, cap, rate)

    def adjust(self, bucket: int, delta: float) -> None:
        """Give back (``delta`` > 0) or charge tokens once a response reported its real usage."""
        with self._locked() as state:
            cap, _ = self._refill(state, bucket)
            state[2 + 3 * bucket] = min(cap, state[2 + 3 * bucket] + delta)

    def pause_until(self, until: float) -> float:
        """Make every process wait until ``until`` (a storm's Retry-After, pacing); returns the shared deadline."""
        with self._locked() as state:
            state[7] = max(state[7], until)
            return state[7]

    def read(self) -> tuple[float, int]:
        """(the pause deadline, the number of concurrency cuts so far)."""
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            state = self._read()
        finally:
            self._unlock()
        return state[7], state[8]

    def cut(self, now: float, hold: float) -> int | None:
        """A storm wants the concurrency halved: a new cut when no episode is running (the episode
        lasts ``hold`` seconds), returning the cuts so far; None when this storm's episode was cut already."""
        with self._locked() as state:
            if now < state[9]:
                return None
            state[8] += 1
            state[9] = now + hold
            return state[8]


class SharedBucket:
    """One of a :class:`HostLimiter`'s buckets, used as a :class:`~evalledger.run.limits.TokenBucket` is."""

    def __init__(self, host: HostLimiter, bucket: int) -> None:
        self.host = host
        self.bucket = bucket

    def wait_time(self, n: float) -> float:
        return self.host.wait_time(self.bucket, n)

    def try_take(self, n: float = 1.0) -> bool:
        """Take ``n`` tokens now if no wait is needed."""
        return self.host.reserve(self.bucket, n, only_if_free=True) == 0.0

    async def acquire(self, n: float = 1.0) -> float:
        """Reserve ``n`` tokens and sleep until they exist. Returns the seconds waited."""
        wait = self.host.reserve(self.bucket, n)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def adjust(self, delta: float) -> None:
        self.host.adjust(self.bucket, delta)


def rpm_bucket(host: HostLimiter) -> SharedBucket:
    """The shared ``--rpm`` bucket."""
    return SharedBucket(host, _RPM)


def tpm_bucket(host: HostLimiter) -> SharedBucket:
    """The shared ``--tpm`` bucket."""
    return SharedBucket(host, _TPM)


def host_limiter_from_env(rpm: float | None, tpm: float | None) -> HostLimiter | None:
    """The limiter named by :data:`HOST_LIMITER_ENV`, attached with these limits; None when the variable is unset."""
    name = os.environ.get(HOST_LIMITER_ENV, "").strip()
    return HostLimiter.attach(name, rpm, tpm) if name else None


def sweep_stale_limiters() -> None:
    """Remove the private limiters of runs that ended without removing theirs (killed): those
    nobody is attached to."""
    for path in limiter_dir().glob(f"evalledger-{os.getuid()}-{_PRIVATE_PREFIX}*.limiter"):
        with contextlib.suppress(OSError):
            fd = os.open(path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                attach = path.with_name(path.name + ".attach")
                afd = os.open(attach, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    fcntl.flock(afd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    path.unlink(missing_ok=True)
                    attach.unlink(missing_ok=True)
                finally:
                    os.close(afd)
            finally:
                os.close(fd)


def _describe(limits: tuple[float, float]) -> str:
    rpm, tpm = limits
    return f"--rpm {f'{rpm:g}' if rpm else 'none'} --tpm {f'{tpm:g}' if tpm else 'none'}"


def _close_fds(mapped: mmap.mmap, *fds: int) -> None:
    mapped.close()
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


__all__ = ["HOST_LIMITER_ENV", "HostLimiter", "SharedBucket", "capacity_for", "host_limiter_from_env", "limiter_dir",
           "limiter_path", "refill", "rpm_bucket", "sweep_stale_limiters", "tpm_bucket", "wait_for"]
