"""What a run's total is, and that commands which only look or plan change no run file.

The total is the largest extent ever asked for: a resume with a smaller ``--limit`` runs fewer
samples but keeps what is done as part of the run, so ``done`` never exceeds ``total``; a larger
``--limit`` extends it. ``slurm`` (without ``--submit``), ``estimate``, ``validate``, ``stats``,
``list``, ``status``, ``report`` and a resume with nothing to do leave every run file byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

from helpers import cli_env, run_cli, write_qa_dataset

from evalledger.fsio import node_local_reason

MODEL = "openai/test-model"


def _files(run_dir: Path) -> dict[str, bytes]:
    """Every file of the run directory but the readers' cache and slurm/ (a script may go there)."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and not p.relative_to(run_dir).parts[0] in (".cache", "slurm")}


def _run(server, data: Path, out: Path, *extra: str):
    return run_cli(["run", "-d", str(data), "-m", MODEL, "--output-dir", str(out), "-q", "--json", *extra],
                   cli_env(server))


def _first_run(server, tmp_path: Path, rows: int, limit: int) -> tuple[Path, Path, str, Path]:
    """A finished run of the first ``limit`` of ``rows`` samples: (dataset, output dir, run ID, run dir)."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", rows)
    out = tmp_path / "out"
    first = _run(server, data, out, "--limit", str(limit))
    assert first.returncode == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    return data, out, run_id, out / run_id


def _stats(server, run_id: str, out: Path) -> dict:
    return json.loads(run_cli(["stats", run_id, "--output-dir", str(out), "--json"], cli_env(server)).stdout)


def test_total_is_the_largest_extent_and_done_never_exceeds_it(fake_server, tmp_path):
    data, out, run_id, run_dir = _first_run(fake_server, tmp_path, 30, 20)
    before = _files(run_dir)

    again = _run(fake_server, data, out, "--limit", "3")  # a resume with nothing to do
    assert again.returncode == 0, again.stderr
    assert fake_server.request_count == 20
    assert _files(run_dir)["manifest.json"] == before["manifest.json"]
    st = _stats(fake_server, run_id, out)
    assert (st["total_samples"], st["completed_samples"], st["pending_samples"]) == (20, 20, 0)
    listed = json.loads(run_cli(["list", "--output-dir", str(out), "--json"], cli_env(fake_server)).stdout)
    assert [(r["completed_samples"], r["total_samples"]) for r in listed] == [(20, 20)]
    verify = run_cli(["verify", run_id, "--output-dir", str(out)], cli_env(fake_server))
    assert verify.returncode == 0, verify.stdout + verify.stderr

    more = _run(fake_server, data, out, "--limit", "25")  # a larger extent extends the run
    assert more.returncode == 0, more.stderr
    st = _stats(fake_server, run_id, out)
    assert (st["total_samples"], st["completed_samples"], st["pending_samples"]) == (25, 25, 0)
    assert json.loads((run_dir / "manifest.json").read_text())["sample_count"] == 25


def test_looking_and_planning_commands_change_no_run_file(fake_server, tmp_path):
    data, out, run_id, run_dir = _first_run(fake_server, tmp_path, 12, 8)
    before = _files(run_dir)
    env = cli_env(fake_server)
    base = ["-d", str(data), "-m", MODEL, "--output-dir", str(out)]
    commands = [
        ["slurm", *base, "--shards", "4"],  # no --limit: the whole dataset, without --submit
        ["estimate", *base],
        ["validate", "-d", str(data), "-m", MODEL],
        ["stats", run_id, "--output-dir", str(out)],
        ["list", "--output-dir", str(out)],
        ["status", run_id, "--output-dir", str(out)],
        ["report", run_id, "--output-dir", str(out), "-o", str(tmp_path / "r.html")],
        ["verify", run_id, "--output-dir", str(out)],
    ]
    for argv in commands:
        r = run_cli(argv, env)
        assert r.returncode == 0, (argv, r.stdout, r.stderr)
        after = _files(run_dir)
        assert after.keys() == before.keys(), (argv[0], set(after) ^ set(before))
        changed = [name for name in before if after[name] != before[name]]
        assert changed == [], (argv[0], changed)
    # A resume with nothing to do is a writer (it takes the lock, marks its status) but leaves the
    # manifest and the results as they were.
    r = run_cli(["run", *base, "--limit", "8", "-q"], env)
    assert r.returncode == 0, r.stderr
    after = _files(run_dir)
    assert after["manifest.json"] == before["manifest.json"]
    assert after["results.jsonl"] == before["results.jsonl"]
    assert fake_server.request_count == 8


def test_slurm_warns_when_a_path_is_local_to_this_node(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"  # pytest's tmp_path is under /tmp: private to this node
    r = run_cli(["slurm", "-d", str(data), "-m", MODEL, "--output-dir", str(out), "--shards", "2"],
                cli_env(fake_server))
    assert r.returncode == 0, r.stderr
    assert f"warning: the output directory: {out.resolve()} is under /tmp" in r.stderr
    assert "every node that runs a task must see it" in r.stderr


def test_node_local_reason_names_temp_dirs_and_memory_filesystems():
    assert "under /tmp" in node_local_reason("/tmp/x/y")
    assert "under /dev/shm" in node_local_reason("/dev/shm/runs")
    assert node_local_reason("/home/shared/runs") is None  # the root filesystem: nothing says it is private
