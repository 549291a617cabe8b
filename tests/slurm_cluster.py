"""A throw-away single-node Slurm cluster on 127.0.0.1, for the integration tests.

It writes a ``slurm.conf`` into a temporary directory (no munge: ``auth/none`` and ``cred/none``;
no cgroups: ``proctrack/linuxproc`` and ``task/none``; every port on loopback; every state, spool,
pid and log file inside the directory), starts ``slurmctld -D`` and ``slurmd -D`` in the
background, waits until the node is idle, and stops both daemons on :meth:`SlurmCluster.stop`.
Clients find the cluster through ``SLURM_CONF`` (see :attr:`SlurmCluster.env`).

Needs Debian's ``slurmctld slurmd slurm-client`` (22.05) and root: slurmd starts jobs as their
owner. Standalone, for poking at it by hand::

    python tests/slurm_cluster.py /tmp/slurm     # prints "export SLURM_CONF=..." and waits for Ctrl-C
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

# Debian puts the daemons in /usr/sbin, which is not on PATH for every shell.
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")
DAEMONS = ("slurmctld", "slurmd")
CLIENTS = ("sbatch", "squeue", "scontrol", "scancel", "sinfo")


def find_program(name: str) -> str | None:
    """Absolute path of a Slurm program on PATH or in the sbin directories, or None."""
    found = shutil.which(name)
    if found:
        return found
    for d in _SBIN_DIRS:
        p = Path(d) / name
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def unavailable_reason() -> str | None:
    """Why a local cluster cannot be started here (None if it can)."""
    missing = [n for n in (*DAEMONS, *CLIENTS) if find_program(n) is None]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} not found); "
                "install it with: apt-get install -y slurmctld slurmd slurm-client")
    if os.geteuid() != 0:
        return "the local Slurm cluster needs root (slurmd starts jobs as their owner)"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def short_hostname() -> str:
    """``hostname -s``: slurmd identifies its node by this name."""
    return socket.gethostname().split(".")[0]


class SlurmCluster:
    """One slurmctld + one slurmd with ``cpus`` CPUs, all files under ``root``."""

    def __init__(self, root: Path | None = None, *, cpus: int = 2) -> None:
        self._own_root = root is None
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="evalledger-slurm-"))
        self.cpus = cpus
        self.node = short_hostname()
        self.conf = self.root / "slurm.conf"
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment for Slurm clients (and for ``evalledger slurm --submit``)."""
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        # The clients live in /usr/bin, but scontrol etc. inside a job may need /usr/sbin too.
        env["PATH"] = env.get("PATH", "") + ":" + ":".join(_SBIN_DIRS)
        return env

    def write_conf(self) -> Path:
        """Write slurm.conf (and the state/spool directories it names) into ``root``."""
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        ctld_port, slurmd_port = _free_port(), _free_port()
        r = self.root
        lines = [
            "ClusterName=evalledgertest",
            # hostname(address): the controller listens and is reached on loopback only.
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/none",
            "CredType=cred/none",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            # CPUs are the only consumable: two 1-CPU tasks run at once on a 2-CPU node.
            "SelectTypeParameters=CR_CPU",
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "ReturnToService=2",
            "SchedulerType=sched/backfill",
            # Look at the queue every second or two (defaults: 60 s / 30 s), so that a requeued task
            # whose begin time has passed starts at once instead of at the next periodic pass.
            "SchedulerParameters=sched_interval=2,bf_interval=1,sched_min_interval=100000",
            # Keep finished jobs visible to squeue/scontrol for a while, and react fast.
            "MinJobAge=300",
            "KillWait=30",
            # A requeued job may start again only after the credential lifetime (default 120 s);
            # credentials are not checked here (cred/none), so keep the tests from idling for it.
            "AuthInfo=cred_expire=5",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MessageTimeout=10",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'slurmd.pid'}",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log' / 'slurmd.log'}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")
        return self.conf

    def start(self, timeout: float = 60.0) -> "SlurmCluster":
        """Write the config, start both daemons, and wait until the node is idle."""
        reason = unavailable_reason()
        if reason:
            raise RuntimeError(reason)
        self.write_conf()
        env = self.env
        try:
            for name, args in (("slurmctld", ["-D", "-i"]), ("slurmd", ["-D"])):
                log = open(self.root / "log" / f"{name}.stdout", "ab")
                # A new session: the daemons must not get the terminal's Ctrl-C before we stop them.
                self._procs.append(subprocess.Popen([find_program(name) or name, *args, "-f", str(self.conf)],
                                                    env=env, stdout=log, stderr=subprocess.STDOUT,
                                                    start_new_session=True))
                log.close()
            self.wait_idle(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def run(self, *args: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run a Slurm client (``scontrol``, ``squeue`` …) against this cluster."""
        prog = find_program(args[0]) or args[0]
        return subprocess.run([prog, *args[1:]], env=self.env, capture_output=True, text=True,
                              timeout=timeout, check=check)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until the node reports idle (slurmd registered, nothing running)."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for p in self._procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a Slurm daemon exited with {p.returncode}; see {self.root / 'log'}:\n"
                                       + self.logs_tail())
            try:
                r = self.run("sinfo", "-h", "-N", "-o", "%T", check=False, timeout=10)
                last = (r.stdout + r.stderr).strip()
                if r.returncode == 0 and last.split() and all(s.startswith("idle") for s in last.split()):
                    return
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Slurm node not idle after {timeout:.0f}s (sinfo: {last!r}):\n" + self.logs_tail())

    def logs_tail(self, lines: int = 30) -> str:
        """The last lines of both daemons' logs, for failure messages."""
        out = []
        for p in sorted((self.root / "log").glob("*")):
            text = p.read_text(errors="replace").splitlines()[-lines:]
            out.append(f"--- {p.name}\n" + "\n".join(text))
        return "\n".join(out)

    def cancel_all(self, timeout: float = 20.0) -> None:
        """Cancel every job of this cluster and wait until the node has none.

        Stopping slurmd does not stop running jobs: their slurmstepd and processes would outlive
        the cluster (and a failed test) if they were not cancelled first.
        """
        try:
            self.run("scancel", "--full", "--user", str(os.geteuid()), check=False, timeout=10)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                r = self.run("squeue", "-h", "-o", "%i", check=False, timeout=10)
                if r.returncode != 0 or not r.stdout.strip():
                    return
                time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def stop(self) -> None:
        """Cancel the jobs, stop both daemons (SIGTERM, then SIGKILL), remove a temporary root. Idempotent."""
        if self._procs and all(p.poll() is None for p in self._procs):
            self.cancel_all()
        for p in reversed(self._procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in reversed(self._procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self._procs.clear()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    where = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
    cluster = SlurmCluster(where).start()
    print(f"export SLURM_CONF={cluster.conf}", flush=True)
    # SIGTERM (e.g. from `timeout`) must stop the daemons too, not just this process.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.stop()
