"""Corrupt and hostile run files (issue 4, item 5): warn or refuse clearly, delete nothing, go on when safe.

Each test makes a real run against the loopback fake server, damages one file of the run
directory the way a crash, a power loss or a person would, and runs again. What we check:

* the warning or the error names the file and what is wrong with it;
* nothing is deleted: a bad file or bad lines are kept aside (``*.corrupt-<timestamp>``,
  ``*.newer-<timestamp>``) byte for byte, and a refused run leaves the directory as it was;
* the run goes on where that is safe, without paying again for a sample that has an ``ok``
  record (the server counts requests).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import all_records, cli_env, marker, read_lines, run_cli, write_qa_dataset

from evalledger.config import RunConfig
from evalledger.errors import ConfigDriftError, LedgerCorruptError
from evalledger.ledger import move_garbage_lines_aside
from evalledger.ledger.state import STATE_VERSION, _state_checksum
from evalledger.ledger.tally import read_results
from evalledger.readers import CheckpointManager
from evalledger.run import prepare_run, run_experiment

MODEL = "openai/test-model"
N, FIRST = 6, 3  # the dataset has N samples; the first run does FIRST of them


def cfg(server, data: Path, out: Path, **kw) -> RunConfig:
    base = dict(dataset=str(data), model=MODEL, output_dir=out, base_url=server.openai_base_url,
                api_key="sk-test", quiet=True, concurrency=2, max_retry_wait=0.2)
    base.update(kw)
    return RunConfig(**base)


def first_run(server, tmp_path: Path, **kw):
    """A run of FIRST samples out of N; returns (dataset, output dir, summary)."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", N)
    out = tmp_path / "out"
    s = run_experiment(cfg(server, data, out, limit=FIRST, **kw))
    assert s.exit_code == 0 and s.ok == FIRST and server.request_count == FIRST
    return data, out, s


def snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory (lock files aside, whose content is not data) and its bytes."""
    return {p.name: p.read_bytes() for p in sorted(run_dir.iterdir()) if not p.name.startswith(".lock")}


def asides(run_dir: Path, prefix: str) -> list[Path]:
    return sorted(run_dir.glob(prefix + "*"))


# ----------------------------------------------------------------------------------- resume_state.json


def _rewrite_state(path: Path, change) -> None:
    state = json.loads(path.read_text())
    change(state)
    state["sha256"] = _state_checksum(state)  # a valid checksum: only the content can give it away
    path.write_text(json.dumps(state))


def _newer(state: dict) -> None:
    state["version"] = STATE_VERSION + 1
    state["counters"] = [1, 2, 3]  # a newer format may mean anything; it must not be trusted or crash us


def _malformed(state: dict) -> None:
    state["counters"] = {"ok_records": "three"}


STATE_CASES = {
    # name: (damage, words the warning must hold, aside kind or None)
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
                  ["not valid JSON, perhaps truncated"], "corrupt"),
    "not JSON": (lambda p: p.write_bytes(b"<html>502 Bad Gateway</html>\n"), ["not valid JSON"], "corrupt"),
    "NUL bytes": (lambda p: p.write_bytes(b"\x00" * 4096), ["is empty (only NUL bytes)"], "corrupt"),
    "not an object": (lambda p: p.write_bytes(b"[1, 2, 3]\n"), ["not valid JSON (not an object)"], "corrupt"),
    "bad checksum": (lambda p: p.write_text(p.read_text().replace('"ok_records": 3', '"ok_records": 99')),
                     ["fails its checksum"], "corrupt"),
    "newer version": (lambda p: _rewrite_state(p, _newer),
                      [f"written by a newer evalledger (state version {STATE_VERSION + 1}; this one reads {STATE_VERSION})"],
                      "newer"),
    "malformed": (lambda p: _rewrite_state(p, _malformed), ["is malformed", "counters"], "corrupt"),
    "missing": (lambda p: p.unlink(), ["resume_state.json is missing"], None),
}


@pytest.mark.parametrize("case", list(STATE_CASES))
def test_bad_resume_state_is_kept_aside_and_rebuilt(fake_server, tmp_path, capsys, case):
    damage, words, kind = STATE_CASES[case]
    data, out, s = first_run(fake_server, tmp_path)
    state_path = s.run_dir / "resume_state.json"
    damage(state_path)
    bad_bytes = state_path.read_bytes() if state_path.exists() else None
    capsys.readouterr()

    s2 = run_experiment(cfg(fake_server, data, out))  # must not crash, whatever the state holds
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert "rebuilding the resume state from the results file" in err
    # It went on, paying only for the samples without an ok record.
    assert s2.exit_code == 0 and s2.ok == N - FIRST and s2.skipped_completed == FIRST
    assert fake_server.request_count == N

    if kind is None:
        assert asides(s.run_dir, "resume_state.json.") == []
    else:
        kept = asides(s.run_dir, f"resume_state.json.{kind}-")
        assert len(kept) == 1 and kept[0].read_bytes() == bad_bytes, kept  # nothing deleted
        assert kept[0].name in err  # the warning says where the old file is
    state, problem = CheckpointManager(s.run_dir).read_resume_state()
    assert problem is None and state is not None
    # Rebuilt from the results (the source of truth), not from whatever the damaged file said.
    assert state["counters"]["ok_records"] == N and state["counters"]["requests"] == N


def test_newer_state_without_results_is_not_trusted_either(tmp_path):
    # read_resume_state alone: a well-formed, correctly checksummed state from a newer version.
    with CheckpointManager(tmp_path / "run") as m:
        m.write_resume_state({"ok_records": 1}, "abc")
        _rewrite_state(m.state_path, lambda st: st.update(version=STATE_VERSION + 5))
        state, problem = m.read_resume_state()
    assert state is None and "newer evalledger" in problem


# ----------------------------------------------------------------------------------- manifest.json


def test_missing_manifest_is_recreated_when_the_results_agree(fake_server, tmp_path, capsys):
    data, out, s = first_run(fake_server, tmp_path)
    (s.run_dir / "manifest.json").unlink()
    capsys.readouterr()
    s2 = run_experiment(cfg(fake_server, data, out))
    err = capsys.readouterr().err
    assert "manifest.json was missing; recreated it from this command" in err
    assert f"the {FIRST} record(s) in the results agree" in err and "the run ID's hash" in err
    assert s2.run_id == s.run_id and s2.ok == N - FIRST and fake_server.request_count == N
    manifest = json.loads((s.run_dir / "manifest.json").read_text())
    assert manifest["identity"] == prepare_run(cfg(fake_server, data, out)).identity
    assert manifest["recreated"]["records_checked"] == FIRST


def test_missing_manifest_of_a_named_run_says_what_it_could_not_check(fake_server, tmp_path, capsys):
    data, out, s = first_run(fake_server, tmp_path, run_id="named")
    (s.run_dir / "manifest.json").unlink()
    capsys.readouterr()
    s2 = run_experiment(cfg(fake_server, data, out, run_id="named"))
    err = capsys.readouterr().err
    assert "Temperature, max tokens, top-p, seed and prompt version are not in the records" in err
    assert "with --run-id they are taken on trust" in err
    assert s2.ok == N - FIRST and fake_server.request_count == N


def _refused_without_manifest(server, run_dir: Path, config: RunConfig, *needles: str) -> None:
    before = snapshot(run_dir)
    requests = server.request_count
    with pytest.raises(ConfigDriftError) as info:
        run_experiment(config)
    message = str(info.value)
    assert f"{run_dir / 'manifest.json'} is missing" in message and "refused" in message
    for needle in needles:
        assert needle in message, (needle, message)
    assert snapshot(run_dir) == before  # no manifest written, results untouched
    assert server.request_count == requests


def test_missing_manifest_with_results_from_another_model_is_refused(fake_server, tmp_path):
    data, out, s = first_run(fake_server, tmp_path, run_id="r", model="openai/model-a")
    (s.run_dir / "manifest.json").unlink()
    _refused_without_manifest(fake_server, s.run_dir, cfg(fake_server, data, out, run_id="r", model="openai/model-b"),
                              "results.jsonl line 1", "has model 'openai/model-a', this command has 'openai/model-b'")


def test_missing_manifest_with_results_from_other_rows_is_refused(fake_server, tmp_path):
    data, out, s = first_run(fake_server, tmp_path, run_id="r")
    (s.run_dir / "manifest.json").unlink()
    # Same ids, other questions: only the records' input_hash can tell.
    edited = tmp_path / "edited.jsonl"
    edited.write_text(data.read_text().replace("Question 1:", "Question ONE:"))
    _refused_without_manifest(fake_server, s.run_dir, cfg(fake_server, edited, out, run_id="r"),
                              "(sample 's00001') was made from other input", "edited.jsonl line 2 differs")
    # Entirely other ids: none of the records belongs to this dataset.
    other = write_qa_dataset(tmp_path / "other.jsonl", 4, start=100)
    _refused_without_manifest(fake_server, s.run_dir, cfg(fake_server, other, out, run_id="r"),
                              f"none of the {FIRST} record(s) is for a sample of")


def test_differing_manifest_is_refused_with_a_diff_and_nothing_changes(fake_server, tmp_path):
    data, out, s = first_run(fake_server, tmp_path, run_id="r")
    before = snapshot(s.run_dir)
    with pytest.raises(ConfigDriftError) as info:
        run_experiment(cfg(fake_server, data, out, run_id="r", temperature=0.7, max_tokens=64))
    message = str(info.value)
    assert "temperature: run has 0.0, this command has 0.7" in message
    assert "max_tokens: run has 512, this command has 64" in message
    assert snapshot(s.run_dir) == before and fake_server.request_count == FIRST


@pytest.mark.parametrize("content", [b'{"run_id": "r", "identity": {"model": ', b"[1, 2]\n", b"caf\xe9\n", b""])
def test_unreadable_manifest_is_refused_and_nothing_changes(fake_server, tmp_path, content):
    data, out, s = first_run(fake_server, tmp_path, run_id="r")
    (s.run_dir / "manifest.json").write_bytes(content)
    # Damage the results too: a refused run must not even repair them.
    with open(s.run_dir / "results.jsonl", "ab") as f:
        f.write(b"garbage line\n{\"sample_id\": \"s00004\", \"sta")
    (s.run_dir / "resume_state.json").write_bytes(b"{trunc")
    before = snapshot(s.run_dir)
    with pytest.raises(LedgerCorruptError) as info:
        run_experiment(cfg(fake_server, data, out, run_id="r"))
    message = str(info.value)
    assert str(s.run_dir / "manifest.json") in message and "Nothing was changed" in message
    assert "--overwrite" in message
    assert snapshot(s.run_dir) == before
    assert fake_server.request_count == FIRST


def test_unreadable_manifest_from_the_cli_exits_2_naming_the_file(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    args = ["run", "--dataset", str(data), "--model", MODEL, "--output-dir", str(out), "--run-id", "r", "--quiet"]
    assert run_cli(args, env, cwd=tmp_path).returncode == 0
    (out / "r" / "manifest.json").write_text("not json\n")
    before = snapshot(out / "r")
    r = run_cli(args, env, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith(f"error: {out / 'r' / 'manifest.json'}: not valid JSON") and "Traceback" not in r.stderr
    assert snapshot(out / "r") == before and fake_server.request_count == 3


# ----------------------------------------------------------------------------------- results files


def test_garbage_lines_in_the_middle_are_moved_aside_and_the_rest_kept(fake_server, tmp_path, capsys):
    data, out, s = first_run(fake_server, tmp_path)
    results = s.run_dir / "results.jsonl"
    good = results.read_bytes().splitlines(keepends=True)
    garbage = [b"this is not json\n", b'{"sample_id": ["s00001"], "status": "ok"}\n', b"[1, 2]\n", b"\n",
               b'{"no_sample_id": 1}\n']
    # lines: good0, garbage0, good1, garbage1..3, good2, garbage4
    results.write_bytes(good[0] + garbage[0] + good[1] + garbage[1] + garbage[2] + garbage[3] + good[2] + garbage[4])
    # Readers skip the garbage without crashing on it (a list as an id is not hashable).
    assert CheckpointManager(s.run_dir).completed_ids() == {"s00000", "s00001", "s00002"}
    capsys.readouterr()

    s2 = run_experiment(cfg(fake_server, data, out))
    err = capsys.readouterr().err
    kept = asides(s.run_dir, "results.jsonl.corrupt-")
    assert len(kept) == 1 and kept[0].read_bytes() == b"".join(garbage)  # every removed byte, in order
    assert "results.jsonl: 5 line(s) that are not records (lines 2, 4, 5, 6, 8)" in err and kept[0].name in err
    lines = results.read_bytes().splitlines(keepends=True)
    assert lines[:3] == good  # the records are kept byte for byte, in order
    assert s2.ok == N - FIRST and fake_server.request_count == N  # nothing paid twice
    assert not list(s.run_dir.glob(".results.jsonl.clean-*"))  # no temp file left behind


def test_nul_filled_tail_is_kept_aside(fake_server, tmp_path, capsys):
    data, out, s = first_run(fake_server, tmp_path)
    results = s.run_dir / "results.jsonl"
    good = results.read_bytes()
    nul = b"\x00" * 8192  # what a power loss can leave: the size grew, the data never landed
    results.write_bytes(good + nul)
    capsys.readouterr()
    s2 = run_experiment(cfg(fake_server, data, out))
    err = capsys.readouterr().err
    assert "repaired a torn last line in results.jsonl" in err
    kept = asides(s.run_dir, "results.jsonl.corrupt-")
    assert len(kept) == 1 and kept[0].read_bytes() == nul
    assert results.read_bytes().startswith(good) and b"\x00" not in results.read_bytes()
    assert s2.ok == N - FIRST and fake_server.request_count == N


def test_nul_block_inside_the_file_is_moved_aside(fake_server, tmp_path, capsys):
    data, out, s = first_run(fake_server, tmp_path)
    results = s.run_dir / "results.jsonl"
    good = results.read_bytes().splitlines(keepends=True)
    # Line 2 is NULs then a newline; line 3 is NULs that overwrote the start of s00001's record.
    damaged = [good[0], b"\x00" * 300 + b"\n", b"\x00" * 40 + good[1], good[2]]
    results.write_bytes(b"".join(damaged))
    lost = json.loads(good[1])["sample_id"]
    capsys.readouterr()
    s2 = run_experiment(cfg(fake_server, data, out))
    err = capsys.readouterr().err
    assert "2 line(s) that are not records (lines 2, 3)" in err
    kept = asides(s.run_dir, "results.jsonl.corrupt-")
    assert len(kept) == 1 and kept[0].read_bytes() == damaged[1] + damaged[2]
    # The sample whose only record was damaged is done again (its record is preserved aside); no other.
    # Its answer was paid for already: the response cache gives it back without a request.
    assert s2.ok == N - FIRST + 1
    assert fake_server.count_for(marker(int(lost[1:]))) == 1 and fake_server.request_count == N
    assert [r.get("cached") for r in all_records(s.run_dir) if r["sample_id"] == lost][-1] is True
    ok = [r["sample_id"] for r in all_records(s.run_dir) if r["status"] == "ok"]
    assert sorted(ok) == [f"s{i:05d}" for i in range(N)]


def test_records_for_unknown_sample_ids_are_kept_and_not_counted(fake_server, tmp_path, capsys):
    data, out, s = first_run(fake_server, tmp_path)
    results = s.run_dir / "results.jsonl"
    template = json.loads(results.read_bytes().splitlines()[0])
    ghosts = [dict(template, sample_id="ghost-1"), dict(template, sample_id="ghost-2"),
              dict(template, sample_id="ghost-1", status="error")]
    with open(results, "ab") as f:
        f.write(b"".join(json.dumps(g).encode() + b"\n" for g in ghosts))
    before = results.read_bytes()
    capsys.readouterr()

    s2 = run_experiment(cfg(fake_server, data, out))
    err = capsys.readouterr().err
    assert "3 record(s) in" in err and "are for 2 sample id(s) that are not in" in err
    assert "'ghost-1', 'ghost-2'" in err and "kept, and not counted" in err
    # Counted over the dataset's samples only: all N done, none pending, the ghosts in neither.
    assert (s2.total_samples, s2.skipped_completed, s2.ok, s2.remaining, s2.exit_code) == (N, FIRST, N - FIRST, 0, 0)
    assert fake_server.request_count == N
    assert results.read_bytes().startswith(before)  # kept, not deleted or moved
    manifest = json.loads((s.run_dir / "manifest.json").read_text())
    assert manifest["ids_not_in_dataset"] == ["ghost-1", "ghost-2"] and manifest["sample_count"] == N


# ----------------------------------------------------------------------------------- the repair itself


def _ledger_file(path: Path, n: int, every: int) -> tuple[bytes, bytes, bytes]:
    """A results file of n lines, every ``every``-th one garbage; returns (all, records only, garbage only)."""
    lines = [json.dumps({"sample_id": f"s{i}", "status": "ok", "pad": "x" * 40}).encode() + b"\n" for i in range(n)]
    junk = [b"\x00" * 20 + b"\n" if i % 2 else b"garbage %d\n" % i for i in range(n // every)]
    mixed, good, bad = [], [], []
    for i, line in enumerate(lines):
        mixed.append(line)
        good.append(line)
        if i % every == every - 1:
            mixed.append(junk[i // every])
            bad.append(junk[i // every])
    data = b"".join(mixed)
    path.write_bytes(data)
    return data, b"".join(good), b"".join(bad)


def test_repair_keeps_file_mode_and_drops_a_stale_clean_copy(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    results = run / "results.jsonl"
    _, good, bad = _ledger_file(results, 50, 10)
    os.chmod(results, 0o640)
    stale = run / ".results.jsonl.clean-20260101T000000.000000Z.tmp"
    stale.write_bytes(good[:100])  # what a writer killed before its rename leaves
    with CheckpointManager(run) as m:
        assert m.moved_lines is not None and m.moved_lines.read_bytes() == bad
        assert "5 line(s) that are not records (lines 11, 22, 33, 44, 55)" in m.repair_warnings[0]
    assert results.read_bytes() == good and (results.stat().st_mode & 0o777) == 0o640
    assert not stale.exists()
    assert move_garbage_lines_aside(results) == (None, [])  # idempotent: a clean file is left alone


_CHILD = """
import sys
from evalledger import CheckpointManager
print("ready", flush=True)
sys.stdin.readline()
CheckpointManager(sys.argv[1]).open_writer().close()
print("done", flush=True)
"""


def test_sigkill_during_the_repair_never_loses_a_line(tmp_path):
    """Kill a writer at random moments while it moves garbage aside: every line survives somewhere,
    the results file is always either untouched or fully cleaned, and a later open finishes the job."""
    rng = random.Random(int(os.environ.get("EVALLEDGER_TEST_SEED", "4")))
    run = tmp_path / "run"
    run.mkdir()
    results = run / "results.jsonl"
    original, good, bad = _ledger_file(results, 30_000, 50)
    # Time the first pass (the writer's open reading every line: all a clean file costs) and a
    # whole repair, so the kills land in the second pass, where the aside file, the temp copy and
    # the rename happen.
    t0 = time.monotonic()
    move_garbage_lines_aside(results)
    span = time.monotonic() - t0
    t0 = time.monotonic()
    with open(results, "rb") as f:
        read_results(f)
    scan = time.monotonic() - t0
    for p in run.glob("results.jsonl.corrupt-*"):
        p.unlink()
    results.write_bytes(original)

    kills = mid_repair = 0
    lo, hi = scan * 0.5, span * 1.5  # the kill delay adapts until kills land inside the second pass
    for _ in range(24):
        child = subprocess.Popen([sys.executable, "-c", _CHILD, str(run)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        asides_before = set(run.glob("results.jsonl.corrupt-*"))
        child.stdin.write("go\n")
        child.stdin.flush()
        delay = rng.uniform(lo, hi)
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        child.wait()
        kills += child.returncode == -signal.SIGKILL
        now = results.read_bytes()
        assert now in (original, good)  # never a half-cleaned file
        asides_now = list(run.glob("results.jsonl.corrupt-*"))
        for aside in asides_now:
            assert bad.startswith(aside.read_bytes())  # an aside copy is (a prefix of) the garbage
        if now == good:
            # Too late: the rename happened, so the garbage was already safe aside. Start again damaged.
            assert any(a.read_bytes() == bad for a in asides_now)
            for aside in asides_now:
                aside.unlink()
            results.write_bytes(original)
            hi = delay
        elif set(asides_now) == asides_before:
            lo = delay  # too early: still looking for garbage, nothing written yet
            hi = max(hi, lo * 1.25)  # the writer's open took longer than the calibration: look later too
        else:
            mid_repair += 1  # killed after the aside copy began, before the rename
            if mid_repair >= 3:
                break
    assert kills >= 4, kills
    assert mid_repair >= 1, (mid_repair, lo, hi)
    CheckpointManager(run).open_writer().close()
    assert results.read_bytes() == good
    assert any(a.read_bytes() == bad for a in run.glob("results.jsonl.corrupt-*"))
    assert not list(run.glob(".results.jsonl.clean-*"))
    records, tail = read_lines(results)
    assert tail == b"" and len(records) == 30_000


def test_results_beyond_the_limit_are_not_called_unknown(fake_server, tmp_path, capsys):
    # Rows cut by --limit are still the dataset's: their records are neither warned about nor listed.
    data, out, s = first_run(fake_server, tmp_path)
    capsys.readouterr()
    s2 = run_experiment(cfg(fake_server, data, out, limit=2))
    assert "not in" not in capsys.readouterr().err
    assert (s2.total_samples, s2.skipped_completed, s2.requests) == (2, 2, 0)
    assert "ids_not_in_dataset" not in json.loads((s.run_dir / "manifest.json").read_text())
