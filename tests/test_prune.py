"""`evalledger prune` and `run --overwrite --keep-old N` (issue 9): frees exactly what it lists, never a
live or locked run, never the only copy of an ok record."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from helpers import cli_env, run_cli, run_config, write_qa_dataset
from test_verify import tree_digest

from evalledger.config import RunConfig
from evalledger.fsio import dir_size
from evalledger.ops import execute_prune, plan_prune
from evalledger.run import run_experiment


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    return run_config(server, data, out, **{**dict(max_attempts=2, run_id="p"), **kw})


def old_copies(out: Path, run_id: str = "p") -> list[Path]:
    return sorted(out.glob(f"{run_id}.old-*"))


def make_history(server, tmp_path: Path, n: int = 6, overwrites: int = 3) -> tuple[Path, Path]:
    """A complete run overwritten ``overwrites`` times (each copy complete)."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", n)
    out = tmp_path / "out"
    assert run_experiment(cfg(server, data, out)).exit_code == 0
    for _ in range(overwrites):
        assert run_experiment(cfg(server, data, out, overwrite=True)).exit_code == 0
    assert len(old_copies(out)) == overwrites
    return data, out


def du(path: Path) -> int:
    return int(subprocess.run(["du", "-sB1", str(path)], capture_output=True, text=True, check=True).stdout.split()[0])


def test_dry_run_lists_with_sizes_and_removes_nothing_then_yes_frees_exactly_that(fake_server, tmp_path):
    _, out = make_history(fake_server, tmp_path)
    olds = old_copies(out)
    before = tree_digest(out)
    env = cli_env(fake_server)
    r = run_cli(["prune", str(out), "--keep", "1", "--dry-run"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "would remove 2 item(s)" in r.stdout
    for p in olds[:2]:  # the two oldest go; the newest stays
        assert str(p) in r.stdout
    assert f"keep {olds[2]} (old run): one of the newest 1 old copy of p" in r.stdout
    assert tree_digest(out) == before

    listed = plan_prune(out, keep=1)
    assert [i.path for i in listed.remove] == olds[:2]
    sizes = {i.path: i.bytes for i in listed.remove}
    assert all(sizes[p] == du(p) for p in olds[:2])  # sizes are what du says
    total_before = du(out)
    r = run_cli(["prune", str(out), "--keep", "1", "--yes", "--json"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["removed"]["freed_bytes"] == doc["plan"]["total_bytes"] == sum(sizes.values())
    assert total_before - du(out) == sum(sizes.values())  # freed exactly what it listed
    assert old_copies(out) == [olds[2]] and (out / "p" / "results.jsonl").exists()
    after = tree_digest(out)
    assert {k: v for k, v in before.items() if not k.startswith(tuple(p.name for p in olds[:2]))} == after


def test_without_yes_on_a_pipe_it_refuses_and_removes_nothing(fake_server, tmp_path):
    _, out = make_history(fake_server, tmp_path, overwrites=2)
    before = tree_digest(out)
    r = subprocess.run([sys.executable, "-m", "evalledger", "prune", str(out), "--keep", "0"], input="y\n",
                       capture_output=True, text=True, env=cli_env(fake_server), cwd=tmp_path, timeout=60)
    assert r.returncode == 1 and "pass --yes" in r.stderr
    assert tree_digest(out) == before


def test_never_the_only_copy_of_an_ok_record(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 6)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out))
    # The new run only gets 2 samples in: the old copy holds the only ok record of 4.
    run_experiment(cfg(fake_server, data, out, overwrite=True, limit=2))
    plan = plan_prune(out, keep=0)
    assert plan.remove == []
    (kept,) = [k for k in plan.kept if k.kind == "old run"]
    assert "holds the only ok record of 4 sample(s)" in kept.reason
    # Once the new run has them all, the old copy can go.
    run_experiment(cfg(fake_server, data, out))
    assert [i.path for i in plan_prune(out, keep=0).remove] == old_copies(out)


def test_two_old_copies_with_the_same_records_only_the_older_goes(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out))
    run_experiment(cfg(fake_server, data, out, overwrite=True))
    run_experiment(cfg(fake_server, data, out, overwrite=True, limit=1))  # the live run has 1 of 4
    olds = old_copies(out)
    plan = plan_prune(out, keep=0)
    assert [i.path for i in plan.remove] == [olds[0]]
    assert any(k.path == olds[1] and "only ok record of 3" in k.reason for k in plan.kept)


def hold_lock(path: Path) -> subprocess.Popen:
    """A real second process that takes a run's lock the way a writer does (filelock) and sleeps."""
    code = ("import filelock, sys, time; l = filelock.FileLock(sys.argv[1], timeout=0); l.acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_locked_run_is_never_touched(fake_server, tmp_path):
    _, out = make_history(fake_server, tmp_path, overwrites=2)
    olds = old_copies(out)
    # A leftover in the live run, whose lock another process holds …
    (out / "p" / "results.jsonl.corrupt-20260101T000000.000000Z").write_bytes(b'{"partial')
    holders = [hold_lock(out / "p" / ".lock"), hold_lock(olds[0] / ".lock")]
    try:
        before = tree_digest(out)
        plan = plan_prune(out, keep=0)
        assert olds[0] not in [i.path for i in plan.remove]
        assert any(k.path == olds[0] and "a process holds its lock" in k.reason for k in plan.kept)
        assert any(k.kind == "corrupt leftover" and "its run is being written" in k.reason for k in plan.kept)
        r = run_cli(["prune", str(out), "--keep", "0", "--yes"], cli_env(fake_server), cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert olds[0].exists() and (out / "p" / "results.jsonl.corrupt-20260101T000000.000000Z").exists()
        assert not olds[1].exists()  # the unlocked copy (its records are in the live run) went
        assert {k: v for k, v in before.items() if not k.startswith(olds[1].name)} == tree_digest(out)
    finally:
        for h in holders:
            h.kill()
            h.wait()


def test_a_lock_taken_after_planning_is_rechecked_before_removal(fake_server, tmp_path):
    _, out = make_history(fake_server, tmp_path, overwrites=2)
    plan = plan_prune(out, keep=0)
    target = plan.remove[0].path
    holder = hold_lock(target / ".lock")
    try:
        result = execute_prune(plan)
        assert target.exists() and [k.path for k in result.skipped] == [target]
        assert "took its lock since" in result.skipped[0].reason
    finally:
        holder.kill()
        holder.wait()


def test_corrupt_leftovers_by_age_and_never_one_holding_an_unknown_ok_record(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    run_experiment(cfg(fake_server, data, out))
    run_dir = out / "p"
    torn = run_dir / "results.jsonl.corrupt-20260101T000000.000000Z"
    torn.write_bytes(b'{"sample_id":"s00001","status":"ok","resp')
    precious = run_dir / "results.jsonl.corrupt-20260102T000000.000000Z"
    precious.write_bytes(b'{"sample_id":"lost-1","status":"ok","score":true}\n')
    young = plan_prune(out, older_than_days=1)
    assert young.remove == [] and all("younger than 1 days" in k.reason for k in young.kept)
    week_ago = time.time() - 8 * 86400
    for p in (torn, precious):
        os.utime(p, (week_ago, week_ago))
    plan = plan_prune(out, older_than_days=7)
    assert [i.path for i in plan.remove] == [torn]
    assert any(k.path == precious and "ok record found nowhere else" in k.reason for k in plan.kept)
    result = execute_prune(plan)
    assert result.freed_bytes == plan.total_bytes > 0 and not torn.exists() and precious.exists()


def test_run_overwrite_keep_old_prunes_right_after_moving_aside(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = ["run", "--dataset", str(data), "--model", "openai/m", "--output-dir", str(out), "--run-id", "p", "--quiet"]
    assert run_cli(args, env, cwd=tmp_path).returncode == 0
    for _ in range(3):
        r = run_cli([*args, "--overwrite", "--keep-old", "1"], env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    # After each overwrite the copy just moved aside is kept; older ones (whose records it has) go.
    olds = old_copies(out)
    assert len(olds) == 1 and "--keep-old 1: removed" in r.stderr
    r = run_cli([*args, "--keep-old", "1"], env, cwd=tmp_path)
    assert r.returncode == 2 and "--keep-old applies to the copies --overwrite moves aside" in r.stderr


def test_dir_size_counts_allocated_blocks(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "f").write_bytes(b"x" * 100_000)
    os.symlink("/usr", d / "link")  # not followed
    assert dir_size(d) == du(d)


def test_prune_runs_from_python(fake_server, tmp_path):
    from evalledger.ops import prune_runs

    _, out = make_history(fake_server, tmp_path, overwrites=3)
    plan, result = prune_runs(out, keep=2, dry_run=True)
    assert result is None and len(plan.remove) == 1 and len(old_copies(out)) == 3
    plan, result = prune_runs(out, keep=2)
    assert [i.path for i in result.removed] == [i.path for i in plan.remove] and len(old_copies(out)) == 2
