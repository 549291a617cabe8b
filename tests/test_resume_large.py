"""Resume at any size: the block reader says of every line exactly what ``parse_record_line``
says, whatever the writer (ours, ``json.dumps`` spacing, sorted keys) and however a line is
damaged; the resume pass sums the records as a record-by-record loop would; and the writer's open
checks only the bytes that no valid resume index covers, without giving up any repair there."""

from __future__ import annotations

import json
import math
import os
import random

import pytest
from test_resume_scan import record

from evalledger.fsio import cachefile
from evalledger.ledger import RunLedger, encode_lines, move_garbage_lines_aside, parse_record_line, scan_ledger
from evalledger.ledger import index as ledger_index
from evalledger.ledger.lines import iter_blocks, lead_columns, read_block, read_lead_block
from evalledger.records import BillTotal, bill_of, count_of, epoch_of, unit_key

GOOD = [record(i) for i in range(6)]


def ours(rec: dict) -> bytes:
    return encode_lines([rec])[:-1]


def spaced(rec: dict) -> bytes:
    return json.dumps(rec).encode()


def sorted_keys(rec: dict) -> bytes:
    return json.dumps(rec, sort_keys=True).encode()


def replace_closing(line: bytes, extra: bytes) -> bytes:
    """``line`` (one JSON object) with ``extra`` added before its closing brace."""
    assert line.endswith(b"}")
    return line[:-1] + extra + b"}"


# Lines that a full parse rejects, or reads differently from a naive look at the start of the line.
ADVERSARIAL = {
    "truncated after the lead keys": ours(GOOD[0])[:260],
    "truncated at the last byte": ours(GOOD[0])[:-1],
    "invalid UTF-8 later in the line": ours(GOOD[0]).replace(b"#### 1", b"#### \xff"),
    "an overlong UTF-8 sequence": ours(GOOD[0]).replace(b"#### 1", b"#### \xc0\xb1"),
    "a NUL later in the line": ours(GOOD[0]).replace(b"#### 1", b"#### \x00"),
    "a NUL block": b"\x00" * 64,
    "duplicate sample_id, not a string": replace_closing(ours(GOOD[0]), b',"sample_id":5'),
    "duplicate sample_id, another id": replace_closing(ours(GOOD[0]), b',"sample_id":"other"'),
    "duplicate status, later an error": replace_closing(ours(GOOD[0]), b',"status":"error"'),
    "duplicate status, escaped key": replace_closing(ours(GOOD[0]), b',"st\\u0061tus":"error"'),
    "duplicate correct": replace_closing(ours(GOOD[0]), b',"correct":false'),
    "duplicate paid, later unpriced": replace_closing(ours(GOOD[0]), b',"paid":{"input_tokens":1,"cost_usd":null}'),
    "duplicate epoch": replace_closing(ours(GOOD[0]), b',"epoch":3'),
    "sample_id a number": ours({**GOOD[0], "sample_id": 7}),
    "sample_id null": ours({**GOOD[0], "sample_id": None}),
    "sample_id a list": ours({**GOOD[0], "sample_id": ["s00000"]}),
    "no sample_id": ours({k: v for k, v in GOOD[0].items() if k != "sample_id"}),
    "status a number": ours({**GOOD[0], "status": 5}),
    "status null (a record, not ok)": ours({**GOOD[0], "status": None}),
    "trailing garbage after the object": ours(GOOD[0]) + b" x",
    "two objects on one line": ours(GOOD[0]) + ours(GOOD[1]),
    "two objects, a space between": ours(GOOD[0]) + b" " + ours(GOOD[1]),
    "trailing whitespace (still a record)": ours(GOOD[0]) + b" \t",
    "a carriage return (still a record)": ours(GOOD[0]) + b"\r",
    "a byte order mark (json reads it)": b"\xef\xbb\xbf" + ours(GOOD[0]),
    "a lone surrogate escape": ours(GOOD[0]).replace(b"#### 1", b"#### \\ud800"),
    "a lone low surrogate escape": ours(GOOD[0]).replace(b"#### 1", b"#### \\udc00"),
    "a surrogate pair (fine)": ours(GOOD[0]).replace(b"#### 1", b"#### \\ud83d\\ude00"),
    "NaN cost (json reads it)": ours(GOOD[0]).replace(b'"cost_usd":1e-05', b'"cost_usd":NaN'),
    "Infinity in another field": replace_closing(ours(GOOD[0]), b',"x":Infinity'),
    "Inf (not JSON)": replace_closing(ours(GOOD[0]), b',"x":Inf'),
    "-NaN (not JSON)": replace_closing(ours(GOOD[0]), b',"x":-NaN'),
    "a number too large for a double": replace_closing(ours(GOOD[0]), b',"x":1e400'),
    "an integer past 64 bits": replace_closing(ours(GOOD[0]), b',"x":' + b"9" * 30),
    "token counts past 64 bits": ours({**GOOD[0], "usage": {"input_tokens": 2**64, "output_tokens": 2**70}}),
    "negative and float token counts": ours({**GOOD[0], "usage": {"input_tokens": -3, "output_tokens": 2.0}}),
    "attempts a bool": ours({**GOOD[0], "attempts": True}),
    "attempts a float": ours({**GOOD[0], "attempts": 1.0}),
    "epoch 2": ours({**GOOD[0], "epoch": 2}),
    "epoch a string": ours({**GOOD[0], "epoch": "2"}),
    "epoch a float": ours({**GOOD[0], "epoch": 2.0}),
    "epoch true": ours({**GOOD[0], "epoch": True}),
    "epoch 0": ours({**GOOD[0], "epoch": 0}),
    "epoch a list": ours({**GOOD[0], "epoch": [2]}),
    "epoch past 64 bits (orjson: a float)": ours({**GOOD[0], "epoch": 2**70}),
    "epoch past 64 bits, negative": ours({**GOOD[0], "epoch": -(2**70)}),
    "paid empty": ours({**GOOD[0], "paid": {}}),
    "paid null, usage priced": ours({**GOOD[0], "paid": None}),
    "paid negative": ours({**GOOD[0], "paid": {"input_tokens": 1, "output_tokens": 1, "cost_usd": -1.0}}),
    "paid an int cost": ours({**GOOD[0], "paid": {"input_tokens": 1, "output_tokens": 1, "cost_usd": 3}}),
    "usage a list": ours({**GOOD[0], "usage": [1, 2]}),
    "correct a string": ours({**GOOD[0], "correct": "true"}),
    "nested 1,100 deep": replace_closing(ours(GOOD[0]), b',"x":' + b"[" * 1100 + b"]" * 1100),
    "nested 20 deep (fine)": replace_closing(ours(GOOD[0]), b',"x":' + b"[" * 20 + b"]" * 20),
    "a raw tab inside a string": ours(GOOD[0]).replace(b"#### 1", b"####\t1"),
    "a JSON array": b"[1, 2]",
    "a JSON string": b'"s00000"',
    "a number": b"5",
    "an empty line": b"",
    "a blank line": b"   ",
    "not JSON": b"not json",
    "a trailing comma": replace_closing(ours(GOOD[0]), b","),
}


def reference(lines: list[bytes]) -> tuple[list[dict], list[int]]:
    """What parse_record_line says of each line: the records, and the 1-based numbers of the others."""
    records, garbage = [], []
    for number, raw in enumerate(lines, start=1):
        rec = parse_record_line(raw)
        (garbage.append(number) if rec is None else records.append(rec))
    return records, garbage


def same(a: object, b: object) -> bool:
    """Equal, with NaN equal to NaN (json reads NaN)."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.mark.parametrize("name", list(ADVERSARIAL))
@pytest.mark.parametrize("writer", [ours, spaced, sorted_keys])
def test_the_block_reader_says_what_a_full_parse_says_of_every_line(name, writer):
    lines = [writer(r) for r in GOOD[:3]] + [ADVERSARIAL[name]] + [writer(r) for r in GOOD[3:]]
    block = read_block(b"".join(line + b"\n" for line in lines), 1)
    records, garbage = reference(lines)
    assert block.garbage == garbage and same(block.records, records)
    assert block.lines == len(lines)
    if block.fast:  # read in one go: nothing the full parse would have rejected
        assert not garbage and block.columns is not None


@pytest.mark.parametrize("writer", [ours, spaced, sorted_keys])
def test_every_writers_records_take_the_fast_path(writer):
    lines = [writer(r) for r in GOOD]
    block = read_block(b"".join(line + b"\n" for line in lines), 1)
    assert block.fast and same(block.records, GOOD)


@pytest.mark.parametrize("name", list(ADVERSARIAL))
@pytest.mark.parametrize("writer", [ours, spaced, sorted_keys])
def test_the_lead_reader_says_what_a_full_parse_says_of_every_line(name, writer):
    """The resume's reader (only the lead values become objects) finds the same garbage lines and
    the same lead values as a full parse of every line."""
    lines = [writer(r) for r in GOOD[:3]] + [ADVERSARIAL[name]] + [writer(r) for r in GOOD[3:]]
    block = read_lead_block(b"".join(line + b"\n" for line in lines), 1)
    records, garbage = reference(lines)
    assert block.garbage == garbage and block.lines == len(lines)
    # An integer past 64 bits is exact here and a float to orjson: the rules read both alike
    # (a count of 0, the same cost), and a block with such an epoch is read the other way.
    assert same(past_64_bits_as_floats(block.lead()), lead_columns(records))
    if block.fast and not block.records:  # decoded in one go: no line the full parse rejects
        assert not garbage


def past_64_bits_as_floats(value):
    if type(value) is int and not -(2**63) <= value < 2**64:
        return float(value)
    if isinstance(value, dict):
        return {k: past_64_bits_as_floats(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [past_64_bits_as_floats(v) for v in value]
    return value


@pytest.mark.parametrize("writer", [ours, spaced, sorted_keys])
def test_every_writers_records_take_the_lead_readers_fast_path(writer):
    lines = [writer(r) for r in GOOD]
    block = read_lead_block(b"".join(line + b"\n" for line in lines), 1)
    assert block.fast and block.records == [] and same(block.lead(), lead_columns(GOOD))


def reference_scan(lines: list[bytes]) -> dict:
    """The resume's sums, record by record with the records module's rules (the old resume loop)."""
    last_ok, errored, bill = {}, set(), BillTotal()
    n = ok = requests = tin = tout = 0
    for raw in lines:
        rec = parse_record_line(raw)
        if rec is None:
            continue
        key = unit_key(rec["sample_id"], epoch_of(rec))
        n += 1
        requests += count_of(rec.get("attempts"))
        if rec.get("status") == "ok":
            ok += 1
            last_ok[key] = rec.get("correct") is True
            usage = rec.get("usage")
            if type(usage) is dict:
                tin += count_of(usage.get("input_tokens"))
                tout += count_of(usage.get("output_tokens"))
        else:
            errored.add(key)
        bill.add(bill_of(rec))
    return {"completed": set(last_ok), "correct": {k for k, v in last_ok.items() if v},
            "errored": errored - set(last_ok), "records": n, "ok_records": ok, "requests": requests,
            "observed": (ok, tin, tout), "cost_usd": bill.cost_usd}


def assert_scan_agrees(run_dir, lines: list[bytes]) -> None:
    scan = scan_ledger(run_dir)
    want = reference_scan(lines)
    got = {"completed": scan.completed, "correct": scan.correct, "errored": scan.errored, "records": scan.records,
           "ok_records": scan.ok_records, "requests": sum(c.requests for c in scan.files.values()),
           "observed": scan.observed, "cost_usd": scan.cost_usd}
    cost, want_cost = got.pop("cost_usd"), want.pop("cost_usd")
    assert got == want
    assert (cost is None) == (want_cost is None) and (cost is None or math.isclose(cost, want_cost, rel_tol=1e-12))


@pytest.mark.parametrize("name", list(ADVERSARIAL))
def test_the_resume_pass_sums_every_line_as_a_record_by_record_loop(tmp_path, name):
    run = tmp_path / "run"
    run.mkdir()
    lines = [ours(r) for r in GOOD[:3]] + [ADVERSARIAL[name]] + [ours(r) for r in GOOD[3:]]
    (run / "results.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    assert_scan_agrees(run, lines)


def test_a_random_mix_of_writers_and_odd_values_sums_alike(tmp_path):
    rng = random.Random(7)
    odd = list(ADVERSARIAL.values())
    lines = []
    for i in range(3000):
        rec = record(rng.randrange(400), status=rng.choice(["ok", "ok", "error"]),
                     correct=rng.choice([True, False, None]), priced=rng.random() < 0.9, epoch=rng.choice([1, 1, 2, 3]))
        lines.append(rng.choice([ours, spaced, sorted_keys])(rec))
        if rng.random() < 0.01:
            lines.append(rng.choice(odd))
    run = tmp_path / "run"
    run.mkdir()
    data = b"".join(line + b"\n" for line in lines)
    (run / "results.jsonl").write_bytes(data)
    assert_scan_agrees(run, lines)
    # the same in small blocks: fast and slow blocks mixed, with sums across them
    blocks = list(iter_blocks(run / "results.jsonl", block_bytes=4096))
    assert any(b.fast for b in blocks) and any(not b.fast for b in blocks)
    assert [n for b in blocks for n in b.garbage] == reference(lines)[1]


# ------------------------------------------------------------------------------ the writer's check


def write_records(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as f:
        f.write(encode_lines(records))


@pytest.fixture
def indexed_run(tmp_path, monkeypatch):
    """A run whose results file (about 1.3 MB) has a valid resume index covering all of it."""
    monkeypatch.setattr(ledger_index, "MIN_BYTES", 1 << 16)
    run = tmp_path / "run"
    write_records(run / "results.jsonl", [record(i) for i in range(3000)])
    with RunLedger(run).open_writer():  # the writer's open reads it all and indexes it
        pass
    assert ledger_index.index_path(run / "results.jsonl").exists()
    return run


def reads_from(monkeypatch) -> list[int]:
    """Where the writer's check starts reading (recorded for each check)."""
    from evalledger.ledger import repair

    starts: list[int] = []
    real = repair.read_results

    def spy(f, start=0, first_line=1):
        starts.append(start)
        return real(f, start, first_line)

    monkeypatch.setattr(repair, "read_results", spy)
    return starts


def test_the_writer_checks_only_what_the_index_does_not_cover(indexed_run, monkeypatch):
    results = indexed_run / "results.jsonl"
    covered = results.stat().st_size
    starts = reads_from(monkeypatch)
    # Appended since: two records, garbage between them, and a torn tail.
    with open(results, "ab") as f:
        f.write(encode_lines([record(5000)]) + b"not a record\n" + encode_lines([record(5001)]) + b'{"sample_id":"s9"')
    ledger = RunLedger(indexed_run).open_writer()
    ledger.close()
    assert starts == [covered]
    assert ledger.repaired_tail is not None and ledger.repaired_tail.read_bytes() == b'{"sample_id":"s9"'
    # The line numbers count from the start of the file, as a full check would.
    assert ledger.moved_lines is not None and ledger.moved_lines.read_bytes() == b"not a record\n"
    assert "line 3002" in ledger.repair_warnings[0]
    lines = results.read_bytes().splitlines()
    assert len(lines) == 3002 and all(parse_record_line(line) for line in lines)
    # Nothing was lost, and the next open (a new inode now) reads it all once, then none of it.
    starts.clear()
    for _ in range(2):
        RunLedger(indexed_run).open_writer().close()
    assert starts == [0, results.stat().st_size]


def test_a_clean_open_indexes_the_file_so_the_scan_reads_nothing(indexed_run, monkeypatch):
    from evalledger.ledger import resume

    results = indexed_run / "results.jsonl"
    write_records(results, [record(i) for i in range(3000, 6000)])  # well past the rewrite threshold
    ledger = RunLedger(indexed_run).open_writer()
    scans: list[int] = []
    real = resume.read_results
    monkeypatch.setattr(resume, "read_results", lambda f, start=0, first_line=1: scans.append(start) or real(
        f, start, first_line))
    scan = scan_ledger(indexed_run, own=ledger.results_path)
    ledger.close()
    assert scans == [results.stat().st_size] and scan.own_end == results.stat().st_size
    assert len(scan.completed) == 6000


def test_an_index_that_counted_garbage_does_not_spare_the_check(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_index, "MIN_BYTES", 1 << 16)
    run = tmp_path / "run"
    results = run / "results.shard-1-of-2.jsonl"
    write_records(results, [record(i) for i in range(1500)])
    with open(results, "ab") as f:
        f.write(b"garbage\n")
    write_records(results, [record(i) for i in range(1500, 3000)])
    # Another writer's scan (here: a plain resume pass) indexes the shard's file, garbage and all.
    scan_ledger(run)
    header, _ = cachefile.read(ledger_index.index_path(results))
    assert header["garbage"] == 1 and header["end"] == results.stat().st_size
    starts = reads_from(monkeypatch)
    ledger = RunLedger(run, (1, 2)).open_writer()
    ledger.close()
    assert starts == [0] and ledger.moved_lines.read_bytes() == b"garbage\n"
    assert "line 1501" in ledger.repair_warnings[0]


@pytest.mark.parametrize("where", ["start", "end", "inode"])
def test_a_changed_file_is_checked_in_full(indexed_run, monkeypatch, where):
    """What the fingerprint sees: the first and last 64 KiB of the covered bytes, and the inode.
    A garbage line written there makes the index invalid, so the check reads every line again."""
    results = indexed_run / "results.jsonl"
    data = bytearray(results.read_bytes())
    lines = bytes(data).splitlines(keepends=True)
    target = 1 if where == "start" else len(lines) - 2
    offset = sum(map(len, lines[:target]))
    bad = b"X" * (len(lines[target]) - 1) + b"\n"  # the same length: only the fingerprint can tell
    data[offset:offset + len(bad)] = bad
    if where == "inode":
        os.unlink(results)
        results.write_bytes(bytes(data))
    else:
        with open(results, "r+b") as f:  # in place: the same inode and length
            f.write(bytes(data))
    starts = reads_from(monkeypatch)
    ledger = RunLedger(indexed_run).open_writer()
    ledger.close()
    assert starts == [0] and ledger.moved_lines.read_bytes() == bad


def test_verify_repair_checks_every_line_whatever_the_index(indexed_run):
    """The documented limit: an in-place edit between the fingerprint's samples goes unseen by the
    writer's open; ``move_garbage_lines_aside`` (``verify --repair``) reads every line."""
    results = indexed_run / "results.jsonl"
    lines = results.read_bytes().splitlines(keepends=True)
    middle = len(lines) // 2
    offset = sum(map(len, lines[:middle]))
    bad = b"Y" * (len(lines[middle]) - 1) + b"\n"
    with open(results, "r+b") as f:
        f.seek(offset)
        f.write(bad)
    st = results.stat()
    with open(results, "rb") as f:
        assert ledger_index.load(results, f, st) is not None  # the sample missed it: the index is still valid
    ledger = RunLedger(indexed_run).open_writer()
    ledger.close()
    assert ledger.moved_lines is None
    aside, numbers = move_garbage_lines_aside(results)
    assert numbers == [middle + 1] and aside.read_bytes() == bad


def test_the_index_is_written_only_over_bytes_on_disk(indexed_run, monkeypatch):
    """Saving an index fsyncs the results file first: a power loss cannot take back what it covers."""
    results = indexed_run / "results.jsonl"
    write_records(results, [record(i) for i in range(3000, 6000)])
    events: list[str] = []
    real_fsync, real_write = os.fsync, cachefile.write

    def fsync(fd):
        events.append("results fsynced" if os.fstat(fd).st_ino == results.stat().st_ino else "other fsync")
        return real_fsync(fd)

    def write(path, *args, **kw):
        events.append(f"{path.name} written")
        return real_write(path, *args, **kw)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(cachefile, "write", write)
    ledger = RunLedger(indexed_run).open_writer()
    ledger.close()
    header, _ = cachefile.read(ledger_index.index_path(results))
    assert header["end"] == results.stat().st_size
    written = events.index("results.jsonl.idx written")
    assert "results fsynced" in events[:written]


# ------------------------------------------------------------------------------ two processes


@pytest.fixture
def two_processes(monkeypatch):
    """Read any stretch with two processes, counting the forks."""
    from evalledger.ledger import tally

    forks: list[int] = []
    real_fork = os.fork

    def fork():
        pid = real_fork()
        if pid:
            forks.append(pid)
        return pid

    monkeypatch.setattr(tally, "TWO_PROCESS_BYTES", 0)
    monkeypatch.setattr(tally, "may_fork", lambda: True)
    monkeypatch.setattr(os, "fork", fork)
    return forks


@pytest.fixture
def ranges_read_here(monkeypatch) -> list[tuple[int, int | None]]:
    """The stretches this process reads itself (the child's reading is in its own memory)."""
    from evalledger.ledger import tally

    here: list[tuple[int, int | None]] = []
    real = tally._read_range

    def spy(f, start, first_line, stop=None):
        here.append((start, stop))
        return real(f, start, first_line, stop)

    monkeypatch.setattr(tally, "_read_range", spy)
    return here


def mixed_lines(n: int = 4000) -> list[bytes]:
    rng = random.Random(11)
    odd = [v for k, v in ADVERSARIAL.items() if "nested 1,100" not in k]
    lines = []
    for i in range(n):
        rec = record(rng.randrange(n // 3), status=rng.choice(["ok", "ok", "error"]), correct=rng.choice([True, False]),
                     epoch=rng.choice([1, 1, 2]))
        lines.append(rng.choice([ours, spaced])(rec))
        if rng.random() < 0.005:
            lines.append(rng.choice(odd))
    return lines


def test_two_processes_sum_up_what_one_does(tmp_path, two_processes, ranges_read_here):
    from evalledger.ledger import tally
    from evalledger.ledger.tally import read_results

    path = tmp_path / "results.jsonl"
    lines = mixed_lines()
    path.write_bytes(b"".join(line + b"\n" for line in lines) + b'{"sample_id":"torn"')
    with open(path, "rb") as f:
        two = read_results(f, 0, 1)
    assert len(two_processes) == 1
    ((start, middle),) = ranges_read_here  # this process read the first half only
    assert start == 0 and 0 < middle < path.stat().st_size
    with open(path, "rb") as f:
        one = tally._read_range(f, 0, 1)
    assert two.garbage == one.garbage == reference(lines)[1] and two.lines == one.lines == len(lines)
    assert two.end == one.end == path.stat().st_size - len(b'{"sample_id":"torn"')
    for name in ("records", "garbage", "ok_records", "error_records", "requests", "input_tokens", "output_tokens"):
        assert getattr(two.part, name) == getattr(one.part, name), name
    assert math.isclose(two.part.billed_cost, one.part.billed_cost, rel_tol=1e-12) or (
        math.isnan(two.part.billed_cost) and math.isnan(one.part.billed_cost))
    two.part.materialise()
    assert two.part.last_ok == one.part.last_ok and two.part.errored == one.part.errored
    assert two.part.counts == one.part.counts and one.part.counts  # units with several records, across the halves


def test_the_writer_and_the_scan_agree_when_two_processes_read(tmp_path, two_processes):
    run = tmp_path / "run"
    run.mkdir()
    lines = mixed_lines()
    (run / "results.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    ledger = RunLedger(run).open_writer()
    ledger.close()
    assert two_processes and ledger.moved_lines is not None
    assert ledger.moved_lines.read_bytes() == b"".join(lines[n - 1] + b"\n" for n in reference(lines)[1])
    clean = (run / "results.jsonl").read_bytes().splitlines()
    assert_scan_agrees(run, clean)


def test_a_failed_child_leaves_its_half_to_this_process(tmp_path, two_processes, ranges_read_here, monkeypatch):
    from evalledger.ledger import tally

    def broken(read):
        raise RuntimeError("the child fails")

    monkeypatch.setattr(tally, "_encode", broken)
    run = tmp_path / "run"
    run.mkdir()
    lines = [ours(record(i)) for i in range(2000)]
    (run / "results.jsonl").write_bytes(b"".join(line + b"\n" for line in lines))
    assert_scan_agrees(run, lines)
    assert two_processes and len(ranges_read_here) == 2 and ranges_read_here[1][1] is None  # both halves here


def test_the_child_holds_no_copy_of_the_writers_locks(tmp_path, two_processes, monkeypatch):
    """A forked reader keeps only the results file and its pipe: were the writer killed meanwhile,
    its locks would be free at once, not when the child is done."""
    from evalledger.ledger import tally

    seen = tmp_path / "child-fds.json"
    real = tally._read_range

    def spy(f, start, first_line, stop=None):
        if os.getpid() != parent:  # in the child
            fds = os.listdir("/proc/self/fd")
            seen.write_text(json.dumps([os.readlink(f"/proc/self/fd/{fd}") for fd in fds if int(fd) > 2
                                        and os.path.exists(f"/proc/self/fd/{fd}")]))
        return real(f, start, first_line, stop)

    parent = os.getpid()
    monkeypatch.setattr(tally, "_read_range", spy)
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.jsonl").write_bytes(b"".join(ours(record(i)) + b"\n" for i in range(2000)))
    with RunLedger(run).open_writer():
        pass
    targets = json.loads(seen.read_text())
    assert two_processes and any(t.endswith("results.jsonl") for t in targets)
    assert not [t for t in targets if ".lock" in os.path.basename(t) or t.endswith(".owner")], targets
