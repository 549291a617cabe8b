"""Paired comparisons: ``compare_runs`` and ``evalledger compare``.

The statistics are checked against values worked out by hand (McNemar's binomial tail) and
against the exact bootstrap distribution enumerated here, independently of the implementation
(for n samples whose differences take a few values, the resampled mean's distribution is a
multinomial one that can be listed in full). Runs are written by hand with the real
CheckpointManager, and once for real: two models on the fake server through the CLI.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from fractions import Fraction
from math import comb
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fakeserver import answer_from_marker, last_user_text
from helpers import cli_env, run_cli, write_qa_dataset

from evalledger import compare_runs
from evalledger.errors import UsageError
from evalledger.fsio import write_json_atomic
from evalledger.readers import CheckpointManager
from evalledger.readers.compare import compare_scored, scored_samples
from evalledger.readers.paired import (
    _binomial_half_tail_exact,
    _binomial_half_tail_float,
    mcnemar_exact_p,
    paired_bootstrap_ci,
)

SHA = "5" * 64


# ------------------------------------------------------------------------------ building runs
def record(sid: str, outcome: Any, *, task: str = "qa", **fields: Any) -> dict[str, Any]:
    """A runner-shaped record: ``outcome`` True/False (scored), None (ok, unscored) or "error"."""
    ok = outcome != "error"
    r: dict[str, Any] = {
        "sample_id": sid, "status": "ok" if ok else "error", "attempts": 1, "shard": None, "model": "openai/m",
        "task": task, "prediction": "1" if ok else None, "target": "1" if ok else None,
        "score": outcome if ok else None, "correct": outcome if ok else None,
        "usage": {"input_tokens": 10, "output_tokens": 5}, "cost_usd": None, "latency_s": 1.0,
        "error": None if ok else {"type": "BadRequestError", "message": "400", "retryable": False, "status_code": 400},
        "started_at": "2026-11-01T12:00:00.000Z", "finished_at": "2026-11-01T12:00:01.000Z",
    }
    r.update(fields)
    return r


def make_run(out: Path, name: str, records: list[dict[str, Any]], *, sha: str = SHA, dataset: str = "qa.jsonl",
             model: str = "openai/m", task: str = "qa", id_source: str = "column:id") -> Path:
    run_dir = out / name
    run_dir.mkdir(parents=True)
    write_json_atomic(run_dir / "manifest.json", {
        "run_id": name, "config": {"model": model}, "task": task, "sample_count": len(records),
        "dataset": {"name": dataset, "path": f"/data/{dataset}", "sha256": sha, "total_rows": 50,
                    "id_source": id_source},
    })
    with CheckpointManager(run_dir) as ledger:
        ledger.append_records(records)
    return run_dir


def pair_runs(out: Path, outcomes: list[tuple[Any, Any]], **kw: Any) -> tuple[Path, Path]:
    """Runs ``a`` and ``b``: sample ``s<i>`` gets outcomes[i] (A's, B's); "-" writes no record."""
    recs: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
    for i, both in enumerate(outcomes):
        for side, outcome in zip(recs, both):
            if outcome != "-":
                side.append(record(f"s{i:02d}", outcome))
    return make_run(out, "a", recs[0], **kw), make_run(out, "b", recs[1], **kw)


# The small table: 10 samples both scored, b = 1 (A right, B wrong), c = 4 (A wrong, B right),
# 3 both right, 2 both wrong; then one sample only A scored, one A scored and B errored, and one
# B scored while A's record has no score.
SMALL_TABLE = ([(True, False)] + [(False, True)] * 4 + [(True, True)] * 3 + [(False, False)] * 2
               + [(True, "-"), (False, "error"), (None, True)])


def exact_bootstrap_interval(differences: list[Fraction]) -> tuple[float, float]:
    """The 2.5 % and 97.5 % quantiles of the exact bootstrap distribution of the mean, by
    listing every multinomial count of the distinct differences. Fails if the distribution's
    CDF comes close to 2.5 % or 97.5 % at a value, where a finite resampling could land on
    either side (the test would then not be sound)."""
    n = len(differences)
    counts = Counter(differences)
    values = sorted(counts)
    dist: dict[Fraction, Fraction] = {}

    def walk(i: int, left: int, prob: Fraction, total: Fraction) -> None:
        p = Fraction(counts[values[i]], n)
        if i == len(values) - 1:
            key = total + values[i] * left
            dist[key] = dist.get(key, Fraction(0)) + prob * p ** left
            return
        for k in range(left + 1):
            walk(i + 1, left - k, prob * comb(left, k) * p ** k, total + values[i] * k)

    walk(0, n, Fraction(1), Fraction(0))
    cdf, lo, hi = Fraction(0), None, None
    for total in sorted(dist):
        cdf += dist[total]
        assert abs(cdf - Fraction(1, 40)) > Fraction(1, 200) and abs(cdf - Fraction(39, 40)) > Fraction(1, 200)
        if lo is None and cdf > Fraction(1, 40):
            lo = total / n
        if hi is None and cdf > Fraction(39, 40):
            hi = total / n
    return float(lo), float(hi)


# ------------------------------------------------------------------------------ the statistics
@pytest.mark.parametrize("b, c, expected", [
    (1, 4, 2 * Fraction(1 + 5, 2 ** 5)),            # P(X <= 1), X ~ Bin(5, 1/2) = 6/32
    (4, 1, 2 * Fraction(1 + 5, 2 ** 5)),            # two-sided: symmetric in b and c
    (0, 6, 2 * Fraction(1, 2 ** 6)),
    (2, 9, 2 * Fraction(1 + 11 + 55, 2 ** 11)),     # 134/2048
    (3, 0, 2 * Fraction(1, 2 ** 3)),
    (2, 2, Fraction(1)),                            # 2 · 11/16 > 1: capped at 1
    (0, 0, Fraction(1)),                            # no discordant pair: no evidence either way
])
def test_mcnemar_exact_p_against_hand_computed_values(b, c, expected):
    assert mcnemar_exact_p(b, c) == pytest.approx(float(expected), rel=1e-15)


def test_mcnemar_large_counts_agree_with_the_exact_sum():
    for n, m in [(20_000, 9_800), (20_000, 10_000), (15_000, 7_000), (3_000, 1)]:
        exact = _binomial_half_tail_exact(n, m)
        assert _binomial_half_tail_float(n, m) == pytest.approx(exact, rel=1e-8)
    # beyond the exact path: the normal approximation is close there (z = -0.706: P = 0.240)
    assert mcnemar_exact_p(1_000_000, 1_001_000) == pytest.approx(0.480, abs=0.002)
    with pytest.raises(ValueError):
        mcnemar_exact_p(-1, 3)


def test_bootstrap_interval_is_the_exact_bootstrap_quantiles_and_is_seeded():
    d = [1] * 4 + [-1] + [0] * 5
    # By hand: S = #(+1) − #(−1) with counts ~ Multinomial(10; .4, .1, .5); P(S <= −2) = 0.0144,
    # P(S <= −1) = 0.0438, P(S <= 6) = 0.9634, P(S <= 7) = 0.9909, so the interval is [−0.1, 0.7].
    assert exact_bootstrap_interval([Fraction(x) for x in d]) == (-0.1, 0.7)
    ci = paired_bootstrap_ci(d, seed=0, resamples=10_000)
    assert ci == pytest.approx((-0.1, 0.7), abs=1e-12)
    assert paired_bootstrap_ci(d, seed=7, resamples=10_000) == pytest.approx((-0.1, 0.7), abs=1e-12)
    spread = [0.1 * i for i in range(20)]  # no lattice: the seed decides the digits
    assert paired_bootstrap_ci(spread, seed=3, resamples=2_000) == paired_bootstrap_ci(spread, seed=3, resamples=2_000)
    assert paired_bootstrap_ci(spread, seed=3, resamples=2_000) != paired_bootstrap_ci(spread, seed=4, resamples=2_000)
    assert paired_bootstrap_ci([0.5] * 5, seed=0, resamples=1_000) == (0.5, 0.5)


# ------------------------------------------------------------------------------ compare_runs
def test_small_table_by_hand(tmp_path):
    a, b = pair_runs(tmp_path, SMALL_TABLE)
    report = compare_runs("a", "b", output_dir=tmp_path, resamples=10_000)
    assert [r.run_id for r in report.runs] == ["a", "b"] and len(report.comparisons) == 1
    c = report.comparisons[0]
    assert c.n == 10
    assert c.accuracy_a == pytest.approx(0.4) and c.accuracy_b == pytest.approx(0.7)
    assert c.difference == pytest.approx(0.3)
    assert (c.a_right_b_wrong, c.a_wrong_b_right, c.both_right, c.both_wrong) == (1, 4, 3, 2)
    assert c.p_value == pytest.approx(12 / 32)
    assert c.difference_ci95 == pytest.approx((-0.1, 0.7), abs=1e-12)
    assert (c.only_a, c.only_b) == (2, 1)  # s10, s11 scored by A only; s12 by B only
    assert c.self_correction is None
    assert c.a.scored_samples == 12 and c.b.scored_samples == 11 and c.a.dataset_sha256 == SHA
    # A run directory works as well as a run ID, and the same seed gives the same interval.
    again = compare_runs(a, b, resamples=10_000)
    assert tuple(again.to_dict()["comparisons"][0]["difference_ci95"]) == c.difference_ci95


def test_each_comparison_is_against_the_first_and_independent_of_the_others(tmp_path):
    rows = [(True, True), (True, False), (False, True), (False, False), (True, True), (False, True)] * 3
    a, b = pair_runs(tmp_path, rows)
    make_run(tmp_path, "c", [record(f"s{i:02d}", i % 2 == 0) for i in range(len(rows))])
    three = compare_runs(a, b, tmp_path / "c", seed=5, resamples=2_000)
    assert [(x.a.run_id, x.b.run_id) for x in three.comparisons] == [("a", "b"), ("a", "c")]
    alone = compare_runs(a, tmp_path / "c", seed=5, resamples=2_000)
    assert alone.comparisons[0].difference_ci95 == three.comparisons[1].difference_ci95
    assert alone.comparisons[0].p_value == three.comparisons[1].p_value
    # A against c by hand: A right on rows 0,1,4 of each 6, c on the even samples.
    a_right = {i for i in range(18) if i % 6 in (0, 1, 4)}
    c_right = {i for i in range(18) if i % 2 == 0}
    assert three.comparisons[1].a_right_b_wrong == len(a_right - c_right)
    assert three.comparisons[1].a_wrong_b_right == len(c_right - a_right)


def test_self_correction_delta_difference(tmp_path):
    before_a, after_a = [False, False, True, True, False, False], [True, False, True, True, False, True]
    before_b, after_b = [True, True, False, False, False, False], [True, True, False, False, True, False]

    def sc_records(before: list[bool], after: list[bool]) -> list[dict[str, Any]]:
        return [record(f"s{i}", aft, task="self_correct", correct_before=bef, correct_after=aft,
                       transition=f"{bef}->{aft}") for i, (bef, aft) in enumerate(zip(before, after))]

    make_run(tmp_path, "sa", sc_records(before_a, after_a), task="self_correct")
    make_run(tmp_path, "sb", sc_records(before_b, after_b), task="self_correct")
    make_run(tmp_path, "qa", [record(f"s{i}", i < 3) for i in range(6)])
    report = compare_runs("sa", "sb", "qa", output_dir=tmp_path, resamples=40_000)
    sc = report.comparisons[0].self_correction
    # Δ_A = (4 − 2)/6, Δ_B = (3 − 2)/6; per sample Δ_B − Δ_A = [−1, 0, 0, 0, +1, −1].
    assert sc.n == 6 and sc.delta_a == pytest.approx(2 / 6) and sc.delta_b == pytest.approx(1 / 6)
    assert sc.difference == pytest.approx(-1 / 6)
    per_sample = [Fraction(int(ab) - int(bb) - (int(aa) - int(ba)))
                  for ba, aa, bb, ab in zip(before_a, after_a, before_b, after_b)]
    assert exact_bootstrap_interval(per_sample) == pytest.approx((-2 / 3, 1 / 3))
    assert sc.difference_ci95 == pytest.approx((-2 / 3, 1 / 3), abs=1e-12)
    # the accuracy compared is the final answer's (correct = after the second turn)
    assert report.comparisons[0].accuracy_a == pytest.approx(4 / 6)
    # Against a qa run, on the same dataset: only A has a Δ, so there is no difference of Δs.
    mixed = report.comparisons[1].self_correction
    assert mixed.n == 6 and mixed.delta_a == pytest.approx(2 / 6) and mixed.delta_b is None
    assert mixed.difference is None and mixed.difference_ci95 is None
    assert report.runs[0].self_correction and not report.runs[2].self_correction


def test_repeats_mean_over_epochs_and_majority_for_mcnemar():
    def frame(rows: list[tuple[str, int | None, Any]]) -> pd.DataFrame:
        return pd.DataFrame({
            "sample_id": pd.array([r[0] for r in rows], dtype="string"),
            "epoch": pd.array([r[1] for r in rows], dtype="Int64"),
            "status": pd.array(["error" if r[2] == "error" else "ok" for r in rows], dtype="string"),
            "correct": pd.array([None if r[2] == "error" else r[2] for r in rows], dtype="boolean"),
        })

    a = frame([("x", 1, True), ("x", 2, True), ("x", 3, False),      # 2/3, right by majority
               ("y", 1, True), ("y", 2, False), ("y", 3, "error"),   # 1/2 of its scored epochs: a tie is wrong
               ("z", 1, False), ("z", 2, False), ("z", 3, None)])    # 0/2 (epoch 3 unscored)
    b = frame([("x", 1, True), ("x", 2, False), ("x", 3, False),     # 1/3, wrong
               ("y", 1, True), ("y", 2, True), ("y", 3, True),       # 3/3, right
               ("z", 1, True), ("z", 2, None), ("z", 3, True)])      # 2/2, right
    sa, sb = scored_samples(a), scored_samples(b)
    assert sa.epochs == 3 and sb.epochs == 3
    r = compare_scored(sa, sb, seed=0, resamples=1_000)
    assert r.n == 3
    assert r.accuracy_a == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert r.accuracy_b == pytest.approx((1 / 3 + 1 + 1) / 3)
    assert r.difference == pytest.approx(r.accuracy_b - r.accuracy_a)
    assert (r.a_right_b_wrong, r.a_wrong_b_right, r.both_right, r.both_wrong) == (1, 2, 0, 0)
    assert r.p_value == pytest.approx(1.0)  # 2 · P(X <= 1), X ~ Bin(3, 1/2) = 2 · 4/8
    lo, hi = r.difference_ci95
    assert lo <= r.difference <= hi
    # Without an epoch column every row is one sample's only epoch.
    flat = scored_samples(a.drop(columns="epoch").drop_duplicates("sample_id"))
    assert flat.epochs == 1 and flat.table["scored"].tolist() == [1, 1, 1]


def test_repeats_through_compare_runs(tmp_path):
    """Records with ``epoch`` (one row per sample and epoch in load_results) next to a run
    without repeats: the per-sample means are paired, and the run without is one epoch each."""
    epochs_a = {"s0": [True, True, False], "s1": [True, False, True], "s2": [False, False, True]}
    make_run(tmp_path, "k3", [record(sid, ok, epoch=e) for sid, oks in epochs_a.items()
                              for e, ok in enumerate(oks, start=1)])
    make_run(tmp_path, "k1", [record("s0", False), record("s1", True), record("s2", True)])
    c = compare_runs("k3", "k1", output_dir=tmp_path, resamples=1_000).comparisons[0]
    assert c.a.epochs == 3 and c.b.epochs == 1 and c.n == 3
    assert c.accuracy_a == pytest.approx((2 / 3 + 2 / 3 + 1 / 3) / 3) and c.accuracy_b == pytest.approx(2 / 3)
    # majorities: s0 and s1 right, s2 wrong; against k1: s0 A✓B✗, s1 both right, s2 A✗B✓
    assert (c.a_right_b_wrong, c.a_wrong_b_right, c.both_right, c.both_wrong) == (1, 1, 1, 0)


# ------------------------------------------------------------------------------ refusals
def test_refuses_runs_on_different_datasets(tmp_path):
    make_run(tmp_path, "gsm", [record("s0", True)], dataset="gsm8k")
    make_run(tmp_path, "mine", [record("s0", True)], dataset="my.jsonl", sha="6" * 64)
    with pytest.raises(UsageError) as e:
        compare_runs("gsm", "mine", output_dir=tmp_path)
    msg = e.value.message
    assert "cannot compare gsm with mine" in msg and "different datasets" in msg
    assert "gsm8k" in msg and "my.jsonl" in msg and "5555555555555555" in msg and "6666666666666666" in msg
    # The same file numbered by another id column is refused too.
    make_run(tmp_path, "hashed", [record("s0", True)], dataset="gsm8k", id_source="content-hash")
    with pytest.raises(UsageError, match=r"name its samples differently \(gsm: ids from column:id; hashed: ids from"):
        compare_runs("gsm", "hashed", output_dir=tmp_path)
    # A manifest that does not say which dataset: no telling, so refused.
    bare = make_run(tmp_path, "bare", [record("s0", True)])
    manifest = json.loads((bare / "manifest.json").read_text())
    del manifest["dataset"]["sha256"]
    write_json_atomic(bare / "manifest.json", manifest)
    with pytest.raises(UsageError, match="cannot compare gsm with bare: the manifest of bare .* sha256"):
        compare_runs("gsm", "bare", output_dir=tmp_path)


def test_refuses_disjoint_samples_and_a_run_with_nothing_scored(tmp_path):
    make_run(tmp_path, "a", [record("s0", True), record("s1", False)])
    make_run(tmp_path, "b", [record("s2", True), record("s3", True), record("s4", "error")])
    with pytest.raises(UsageError, match=r"cannot compare a with b: no sample was scored by both \(a scored 2, "
                                         r"b scored 2, none in common\)"):
        compare_runs("a", "b", output_dir=tmp_path)
    make_run(tmp_path, "none", [record("s0", "error"), record("s1", None)])
    with pytest.raises(UsageError, match=r"cannot compare a with none: none has nothing scored .*1 ok record\(s\), "
                                         r"1 error record\(s\)"):
        compare_runs("a", "none", output_dir=tmp_path)
    with pytest.raises(UsageError, match="cannot compare none with a: none has nothing scored"):
        compare_runs("none", "a", output_dir=tmp_path)
    with pytest.raises(UsageError, match="resamples must be"):
        compare_runs("a", "b", output_dir=tmp_path, resamples=10)


# ------------------------------------------------------------------------------ the CLI
def test_cli_table_json_and_exit_codes(tmp_path):
    pair_runs(tmp_path / "out", SMALL_TABLE)
    make_run(tmp_path / "out", "other", [record("s00", True)], dataset="other.jsonl", sha="7" * 64)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # no server: compare sends nothing
    out = str(tmp_path / "out")
    r = run_cli(["compare", "a", "b", "--output-dir", out], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if line.startswith("b "))
    assert re.search(r"\b10\s+40\.0%\s+70\.0%\s+\+30\.0 \[-10\.0, \+70\.0\]\s+0\.375\s+1\s+4$", row), row
    assert "b: not compared: 2 sample(s) scored by A only, 1 by B only" in r.stdout
    assert "10000 resamples, seed 0" in " ".join(r.stdout.split())

    j = run_cli(["compare", str(tmp_path / "out" / "a"), str(tmp_path / "out" / "b"), "--json", "--seed", "3",
                 "--resamples", "5000"], env, cwd=tmp_path)
    assert j.returncode == 0, j.stderr
    data = json.loads(j.stdout)
    assert data["seed"] == 3 and data["resamples"] == 5000
    c = data["comparisons"][0]
    assert (c["n"], c["a_right_b_wrong"], c["a_wrong_b_right"]) == (10, 1, 4)
    assert c["p_value"] == pytest.approx(0.375) and c["difference_ci95"] == pytest.approx([-0.1, 0.7])
    assert c["a"]["run_id"] == "a" and c["b"]["run_id"] == "b"

    bad = run_cli(["compare", "a", "other", "--output-dir", out], env, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: cannot compare a with other: they are on different")
    assert "Traceback" not in bad.stderr and bad.stdout == ""
    one = run_cli(["compare", "a", "--output-dir", out], env, cwd=tmp_path)
    assert one.returncode == 2 and "at least two runs" in one.stderr
    missing = run_cli(["compare", "a", "nope", "--output-dir", out], env, cwd=tmp_path)
    assert missing.returncode == 2 and "no run found at 'nope'" in missing.stderr
    few = run_cli(["compare", "a", "b", "--resamples", "10", "--output-dir", out], env, cwd=tmp_path)
    assert few.returncode == 2 and "error: resamples must be a whole number >= 100" in few.stderr


# ------------------------------------------------------------------------------ end to end
WRONG = {"model-a": {1, 4}, "model-b": {0, 3, 4, 6, 9}}


def two_models(body: dict[str, Any]) -> str:
    """Each model answers the marker's value except on its own wrong samples."""
    m = re.search(r"\[\[ANSWER:(\d+)\]\]", last_user_text(body))
    if m and int(m.group(1)) in WRONG.get(body.get("model"), set()):
        return "The answer is 12345.\n#### 12345"
    return answer_from_marker(body)


def test_two_real_runs_compared_through_the_cli(fake_server, tmp_path):
    fake_server.responder = two_models
    data = write_qa_dataset(tmp_path / "qa.jsonl", 10)
    env = cli_env(fake_server)
    out = tmp_path / "out"
    for model, limit in (("model-a", "10"), ("model-b", "8")):
        r = run_cli(["run", "--dataset", str(data), "--model", f"openai/{model}", "--output-dir", str(out),
                     "--limit", limit, "--quiet"], env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    run_a = next(d.name for d in out.iterdir() if "model-a" in d.name)
    run_b = next(d.name for d in out.iterdir() if "model-b" in d.name)

    r = run_cli(["compare", run_a, run_b, "--output-dir", str(out), "--json"], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    c = json.loads(r.stdout)["comparisons"][0]
    # On samples 0-7 (B ran 8): A wrong on 1, 4; B wrong on 0, 3, 4, 6.
    assert c["n"] == 8 and (c["only_a"], c["only_b"]) == (2, 0)
    assert c["accuracy_a"] == pytest.approx(6 / 8) and c["accuracy_b"] == pytest.approx(4 / 8)
    assert (c["a_right_b_wrong"], c["a_wrong_b_right"], c["both_right"], c["both_wrong"]) == (3, 1, 3, 1)
    assert c["p_value"] == pytest.approx(2 * 5 / 16)  # 2 · P(X <= 1), X ~ Bin(4, 1/2)
    assert c["a"]["model"] == "openai/model-a" and c["b"]["model"] == "openai/model-b"
    # Per-sample B − A: −1 three times, +1 once, 0 four times. The exact bootstrap puts the upper
    # end at +0.25 (P(mean <= 0.25) = 0.9912, P(mean <= 0.125) = 0.9678); the lower one sits
    # where the CDF passes 2.5 % within 0.0001 (−0.625 or −0.75, as the draws fall).
    lo, hi = c["difference_ci95"]
    assert hi == pytest.approx(0.25) and (lo == pytest.approx(-0.625) or lo == pytest.approx(-0.75))

    table = run_cli(["compare", run_a, run_b, "--output-dir", str(out)], env, cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert f"A = {run_a}: openai/model-a, task qa" in table.stdout
    assert re.search(rf"^{re.escape(run_b)}\s+openai/model-b\s+qa\s+8\s+75\.0%\s+50\.0%\s+-25\.0 \[", table.stdout, re.M)
