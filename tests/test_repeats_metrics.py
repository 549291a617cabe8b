"""Repeats on the reading side: one row per (sample, epoch), and the metrics of a run with epochs.

Decisions these tests pin down:

* Every reader keeps the latest record of each unit (sample, epoch): its latest ok record, else
  its latest error. A retried epoch 2 never touches epoch 1; a record without ``epoch`` is epoch 1,
  so a run written before repeats reads exactly as before.
* pass@k is the unbiased estimator of Chen et al. (2021), per sample ``1 - C(n-c, k)/C(n, k)``
  (``n`` scored epochs, ``c`` correct), averaged over samples with ``n >= k``; the others are
  counted as excluded.
* The majority vote counts each scored epoch's normalised prediction once; a tie goes to the
  prediction given at the lowest epoch (not the first in file order); an epoch with no prediction
  abstains.
* The mean over epochs treats the sample as the unit: the mean of per-sample accuracies, with the
  interval mean ± 1.96 × sd(per-sample means) / √samples. With one epoch the stats are as before
  (Wilson), and ``stats`` prints no new line.

Runs are written by hand with the real CheckpointManager, a manifest beside them.
"""

from __future__ import annotations

import json
import math
import os
import re
from fractions import Fraction
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from helpers import run_cli
from test_results import rec, write_manifest, write_records

from evalledger.readers import (
    get_stats,
    load_results,
    mean_interval,
    pass_at_k,
    scan_cache,
    vote_key,
    wilson_interval,
)
from evalledger.readers.scan import scan_run


def erec(sid: str, epoch: int | None, status: str = "ok", correct: bool | None = True, *, at: float = 0.0,
         prediction: Any = "1", **fields: Any) -> dict[str, Any]:
    """A runner-shaped record of one (sample, epoch); ``epoch=None`` leaves the field out (an old record)."""
    r = rec(sid, status, correct, at=at, **fields)
    if status == "ok":
        r["prediction"] = prediction
    if epoch is not None:
        r["epoch"] = epoch
    return r


def k_run(path: Path, records: list[dict[str, Any]], *, task: str = "qa", samples: int, epochs: int | None = 3,
          shard: tuple[int, int] | None = None) -> Path:
    """A run directory written by hand: a manifest (with ``epochs`` when given) and the records."""
    write_manifest(path, task=task, sample_count=samples)
    if epochs is not None:
        manifest = json.loads((path / "manifest.json").read_text())
        (path / "manifest.json").write_text(json.dumps({**manifest, "epochs": epochs}))
    write_records(path, records, shard)
    return path


def stats_table(stdout: str) -> dict[str, str]:
    return dict(re.split(r"\s{2,}", ln.strip(), maxsplit=1) for ln in stdout.splitlines())


# ------------------------------------------------------------------------------------ pass@k
@pytest.mark.parametrize("n,c,k,expected", [
    (5, 2, 1, Fraction(2, 5)),          # 1 - C(3,1)/C(5,1) = 1 - 3/5
    (5, 2, 2, Fraction(7, 10)),         # 1 - C(3,2)/C(5,2) = 1 - 3/10
    (5, 2, 3, Fraction(9, 10)),         # 1 - C(3,3)/C(5,3) = 1 - 1/10
    (5, 2, 4, Fraction(1)),             # n - c = 3 < 4: every 4 tries hold a correct one
    (10, 3, 5, Fraction(11, 12)),       # 1 - C(7,5)/C(10,5) = 1 - 21/252
    (3, 1, 3, Fraction(1)),             # n = k with a correct try: certain
    (3, 0, 3, Fraction(0)),             # n = k, c = 0
    (4, 0, 1, Fraction(0)),             # c = 0 for any k
    (4, 0, 4, Fraction(0)),
    (4, 4, 1, Fraction(1)),             # c = n
    (4, 4, 4, Fraction(1)),
    (1, 1, 1, Fraction(1)),
    (1, 0, 1, Fraction(0)),
])
def test_pass_at_k_against_hand_computed_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(float(expected), abs=1e-12)


def test_pass_at_k_agrees_with_the_binomial_formula_and_stays_stable_for_large_n():
    for n in range(1, 13):
        for c in range(n + 1):
            for k in range(1, n + 1):
                exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
                assert pass_at_k(n, c, k) == pytest.approx(float(exact), abs=1e-12), (n, c, k)
    # C(2000, 1000) overflows a float; the product does not.
    assert pass_at_k(2000, 1, 1000) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)  # n < k: no estimate
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_humaneval_run_reports_pass_at_k_for_every_k_with_excluded_samples(tmp_path):
    # h1: T F T (n=3, c=2) · h2: F F F (n=3, c=0) · h3: T, error, F (n=2, c=1) · h4: T T T.
    records = [erec("h1", 1), erec("h1", 2, correct=False), erec("h1", 3),
               erec("h2", 1, correct=False), erec("h2", 2, correct=False), erec("h2", 3, correct=False),
               erec("h3", 1), erec("h3", 2, "error"), erec("h3", 3, correct=False),
               erec("h4", 1), erec("h4", 2), erec("h4", 3)]
    run = k_run(tmp_path / "he", records, task="humaneval", samples=4)
    s = get_stats(run)
    rep = s["repeats"]
    assert "majority_vote" not in rep  # not a task whose answers are voted on
    passes = {p["k"]: p for p in rep["pass_at_k"]}
    assert passes[1]["value"] == pytest.approx((2 / 3 + 0 + 1 / 2 + 1) / 4)
    assert passes[2]["value"] == pytest.approx((1 + 0 + 1 + 1) / 4)  # h1: 1 - C(1,2)/C(3,2); h3: n = k = 2, c = 1
    assert passes[3]["value"] == pytest.approx((1 + 0 + 1) / 3)
    assert [(p["samples"], p["excluded"]) for p in rep["pass_at_k"]] == [(4, 0), (4, 0), (3, 1)]
    per = load_results(run, per_sample=True).set_index("sample_id")
    assert list(per.columns[:4]) == ["epochs", "ok_epochs", "correct_epochs", "mean_correct"]
    assert per.loc["h3", ["epochs", "ok_epochs", "correct_epochs"]].tolist() == [3, 2, 1]
    assert pd.isna(per.loc["h3", "pass@3"]) and per.loc["h1", "pass@2"] == 1.0
    assert per["pass@1"].tolist() == pytest.approx([2 / 3, 0, 0.5, 1])
    assert "majority_prediction" not in per.columns
    # pass@k for any task, when asked; and not at all when turned off.
    assert "pass_at_k" in get_stats(run, pass_k=True)["repeats"]
    assert "repeats" in get_stats(run, pass_k=False) and "pass_at_k" not in get_stats(run, pass_k=False)["repeats"]


# ------------------------------------------------------------------------------------ mean and CI
def test_mean_over_epochs_and_its_interval_over_samples_by_hand(tmp_path):
    # Per-sample means 2/3, 0, 1/2, 1 (h3's error epoch is not scored): mean 13/24; their sample
    # standard deviation is 5/12, so the standard error over 4 samples is 5/24.
    records = [erec("h1", 1), erec("h1", 2, correct=False), erec("h1", 3),
               erec("h2", 1, correct=False), erec("h2", 2, correct=False), erec("h2", 3, correct=False),
               erec("h3", 1), erec("h3", 2, "error"), erec("h3", 3, correct=False),
               erec("h4", 1), erec("h4", 2), erec("h4", 3)]
    s = get_stats(k_run(tmp_path / "r", records, samples=4))
    rep = s["repeats"]
    assert rep["mean_accuracy"] == pytest.approx(13 / 24)
    assert rep["mean_accuracy_se"] == pytest.approx(5 / 24)
    lo, hi = rep["mean_accuracy_ci95"]
    assert lo == pytest.approx(13 / 24 - 1.959964 * 5 / 24) and hi == pytest.approx(13 / 24 + 1.959964 * 5 / 24)
    assert (s["accuracy"], s["accuracy_ci95"]) == (rep["mean_accuracy"], rep["mean_accuracy_ci95"])
    assert rep["scored_samples"] == 4
    # Per epoch: correct / scored, each with its Wilson interval.
    assert [(e["epoch"], e["completed"], e["correct"]) for e in rep["accuracy_by_epoch"]] == [
        (1, 4, 3), (2, 3, 1), (3, 4, 2)]
    assert rep["accuracy_by_epoch"][1]["accuracy_ci95"] == pytest.approx(list(wilson_interval(1, 3)))
    # Counts are of units: 4 samples × 3 epochs.
    assert (s["epochs"], s["total_samples"], s["completed_samples"], s["error_count"], s["correct_count"]) == (
        3, 12, 11, 1, 6)
    assert s["pending_samples"] == 1


def test_mean_interval_edges():
    assert mean_interval([]) == (None, None, None)
    assert mean_interval([0.5]) == (0.5, None, None)  # one sample: no spread to measure
    mean, se, (lo, hi) = mean_interval([1.0, 1.0, 1.0])
    assert (mean, se, lo, hi) == (1.0, 0.0, 1.0, 1.0)
    _, _, (lo, hi) = mean_interval([0.0, 1.0])  # mean 0.5 ± 1.96 × 0.5: clipped to [0, 1]
    assert (lo, hi) == (0.0, 1.0)


# ------------------------------------------------------------------------------------ majority vote
def test_majority_vote_ties_go_to_the_lowest_epoch_and_empty_predictions_abstain(tmp_path):
    records = [
        # q1: "18" (epoch 1, as "18.00" normalises) ties with "7" (epochs 3, 4): 18 wins, and it is correct.
        erec("q1", 1, prediction="18"), erec("q1", 2, prediction=" 18.00 "),
        erec("q1", 3, correct=False, prediction="7"), erec("q1", 4, correct=False, prediction="7"),
        # q2: "4" twice beats "3"; epoch 4 gave no prediction and abstains.
        erec("q2", 1, correct=False, prediction="3"), erec("q2", 2, prediction="4"), erec("q2", 3, prediction="4"),
        erec("q2", 4, correct=False, prediction=None),
        # q3: no prediction at all (epoch 3 an error): no vote, not correct, still scored.
        erec("q3", 1, correct=False, prediction=None), erec("q3", 2, correct=False, prediction=None),
        erec("q3", 3, "error"), erec("q3", 4, correct=False, prediction=""),
        # q4: written epoch 2 first: a tie between "9" and "10" goes to epoch 1's "10", not to file order.
        erec("q4", 2, prediction="9"), erec("q4", 1, correct=False, prediction="10"),
        erec("q4", 4, "error"), erec("q4", 3, "error"),
    ]
    run = k_run(tmp_path / "qa", records, samples=4, epochs=4)
    per = load_results(run, per_sample=True).set_index("sample_id")
    assert per["majority_prediction"].tolist()[:2] == ["18", "4"] and pd.isna(per.loc["q3", "majority_prediction"])
    assert per.loc["q4", "majority_prediction"] == "10"
    assert per["majority_correct"].tolist() == [True, True, False, False]
    assert per["majority_tied"].tolist() == [True, False, False, True]
    vote = get_stats(run)["repeats"]["majority_vote"]
    assert vote == {"accuracy": 0.5, "correct": 2, "samples": 4, "ties": 2}
    assert "pass_at_k" not in get_stats(run)["repeats"]


def test_mcq_votes_on_letters_whatever_their_case(tmp_path):
    records = [erec("m1", 1, prediction="b"), erec("m1", 2, correct=False, prediction="C"),
               erec("m1", 3, prediction="B"), erec("m1", 4, correct=False, prediction="c"),
               erec("m2", 1, correct=False, prediction="A"), erec("m2", 2, prediction="D"),
               erec("m2", 3, prediction=" d"), erec("m2", 4, correct=False, prediction="A ")]
    run = k_run(tmp_path / "mcq", records, task="mcq", samples=2, epochs=4)
    per = load_results(run, per_sample=True).set_index("sample_id")
    # m1: B B vs C C, B first at epoch 1; m2: A A vs D D, A first at epoch 1 (and wrong).
    assert per["majority_prediction"].tolist() == ["B", "A"]
    assert per["majority_correct"].tolist() == [True, False]
    assert vote_key(" b ", "mcq") == "B" and vote_key("$1,080.", "qa") == "1080" and vote_key(None, "qa") is None
    assert vote_key(18, "qa") == "18" and vote_key("", "qa") is None


# ------------------------------------------------------------------------------------ dedupe per unit
def _retried(tmp_path: Path) -> Path:
    return k_run(tmp_path / "retry", [
        erec("s1", 1, correct=True, at=1, prediction="1"),
        erec("s1", 2, "error", at=2),
        erec("s2", 1, correct=False, at=3, prediction="5"),
        erec("s1", 2, correct=False, at=4, prediction="2"),   # epoch 2 retried: ok
        erec("s1", 2, correct=True, at=5, prediction="1"),    # ... and again: the latest ok wins
        erec("s1", 2, "error", at=6),                          # a later error never hides an ok
        erec("s2", 2, "error", at=7, err_type="RateLimitError", code=429),
        erec("s2", 2, "error", at=8, err_type="InternalServerError", code=500),  # latest error wins
    ], samples=2, epochs=2)


@pytest.mark.parametrize("arrow", ["on", "off"])
def test_every_reader_keeps_the_latest_record_of_each_sample_and_epoch(tmp_path, monkeypatch, arrow):
    monkeypatch.setenv("EVALLEDGER_SCAN_ARROW", arrow)
    run = _retried(tmp_path)
    df = load_results(run)
    assert list(zip(df["sample_id"], df["epoch"])) == [("s1", 1), ("s1", 2), ("s2", 1), ("s2", 2)]
    assert str(df["epoch"].dtype) == "int64"
    by = df.set_index(["sample_id", "epoch"])
    assert by.loc[("s1", 1), "prediction"] == "1" and bool(by.loc[("s1", 1), "correct"]) is True  # untouched
    assert by.loc[("s1", 2), "status"] == "ok" and bool(by.loc[("s1", 2), "correct"]) is True
    assert by.loc[("s1", 2), "finished_at"] == pd.Timestamp("2026-11-01T12:00:05Z")
    assert by.loc[("s2", 2), "error_type"] == "InternalServerError"
    s = get_stats(run)
    assert (s["completed_samples"], s["error_count"], s["correct_count"], s["pending_samples"]) == (3, 1, 2, 1)
    assert s["errors_by_type"] == {"InternalServerError": 1}
    assert s["shards"]["all"]["ok"] == 3 and s["shards"]["all"]["records"] == 8
    assert [e["accuracy"] for e in s["repeats"]["accuracy_by_epoch"]] == [0.5, 1.0]


def test_the_reader_cache_keeps_units_apart_when_a_retry_lands_in_the_tail(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_cache, "MIN_BYTES", 0)
    monkeypatch.setattr(scan_cache, "REWRITE_FRACTION", 10.0)  # keep the first copy: the tail is parsed
    monkeypatch.delenv("EVALLEDGER_SCAN_CACHE", raising=False)
    run = _retried(tmp_path)
    first = load_results(run)
    assert scan_run(run).file_summaries[0].from_cache > 0
    write_records(run, [erec("s2", 2, correct=True, at=9, prediction="7"), erec("s1", 1, "error", at=10)])
    df = load_results(run).set_index(["sample_id", "epoch"])
    assert df.loc[("s2", 2), "status"] == "ok" and df.loc[("s2", 2), "prediction"] == "7"
    assert df.loc[("s1", 1), "status"] == "ok"  # the cached ok is not hidden by the new error
    assert len(df) == len(first) == 4
    with monkeypatch.context() as m:
        m.setenv("EVALLEDGER_SCAN_CACHE", "off")
        cold = load_results(run).set_index(["sample_id", "epoch"])
    pd.testing.assert_frame_equal(df, cold)


def test_old_records_without_epoch_are_epoch_one_everywhere(tmp_path, monkeypatch):
    records = [erec("a", None), erec("b", None, correct=False), erec("c", None, "error")]
    run = k_run(tmp_path / "old", records, samples=3, epochs=None)
    for arrow in ("on", "off"):
        monkeypatch.setenv("EVALLEDGER_SCAN_ARROW", arrow)
        df = load_results(run)
        assert df["epoch"].tolist() == [1, 1, 1] and list(df.columns[:3]) == ["sample_id", "epoch", "status"]
        assert "seed" not in df.columns and "fewshot_ids" not in df.columns  # no record has them
        s = get_stats(run)
        assert s["epochs"] == 1 and "repeats" not in s
        assert (s["total_samples"], s["completed_samples"], s["accuracy"]) == (3, 2, 0.5)
        assert s["accuracy_ci95"] == list(wilson_interval(1, 2))
    # A record that names epoch 1 is the same unit as one without it: the later ok wins.
    write_records(run, [erec("b", 1, correct=True, at=9), erec("a", 2, correct=False)])
    df = load_results(run).set_index(["sample_id", "epoch"])
    assert sorted(df.index) == [("a", 1), ("a", 2), ("b", 1), ("c", 1)]
    assert bool(df.loc[("b", 1), "correct"]) is True
    per = load_results(run, per_sample=True).set_index("sample_id")
    assert per.loc["a", "epochs"] == 2 and per.loc["c", "ok_epochs"] == 0 and pd.isna(per.loc["c", "mean_correct"])


def test_seed_and_fewshot_ids_become_columns_when_records_have_them(tmp_path):
    run = k_run(tmp_path / "fs", [erec("a", 1, seed=0, fewshot_ids=["x", "y"]), erec("a", 2, seed=123456789),
                                  erec("b", 1, seed=0, fewshot_ids="not a list")], samples=2, epochs=2)
    df = load_results(run)
    assert list(df.columns[:4]) == ["sample_id", "epoch", "seed", "fewshot_ids"]
    assert df["seed"].tolist() == [0, 123456789, 0] and str(df["seed"].dtype) == "Int64"
    assert df["fewshot_ids"].tolist()[0] == ["x", "y"] and df["fewshot_ids"].tolist()[1:] == [None, None]


# ------------------------------------------------------------------------------------ the CLI
def _k3_run(out: Path) -> Path:
    """A K=3 qa run of 4 samples: a complete, b with an error at epoch 3, c only epoch 1 so far, d
    outside the dataset (the manifest says so)."""
    records = [erec("a", 1), erec("a", 2), erec("a", 3, correct=False, prediction="2"),
               erec("b", 1, correct=False, prediction="3"), erec("b", 2, prediction="1"),
               erec("b", 3, "error"), erec("c", 1, correct=False, prediction="4"), erec("d", 1)]
    run = k_run(out / "k3", records, samples=4)
    manifest = json.loads((run / "manifest.json").read_text())
    (run / "manifest.json").write_text(json.dumps({**manifest, "ids_not_in_dataset": ["d"]}))
    return run


def test_cli_stats_of_a_k3_run(tmp_path):
    run = _k3_run(tmp_path / "out")
    r = run_cli(["stats", "k3", "--output-dir", str(tmp_path / "out")], dict(os.environ))
    assert r.returncode == 0, r.stderr
    table = stats_table(r.stdout)
    # Per-sample means: a 2/3, b 1/2 (error unscored), c 0 → 7/18; d is not in the dataset.
    assert table["epochs"] == "3"
    assert table["samples × epochs"] == "4 × 3 = 12 units"
    assert table["completed (ok)"] == "6 units" and table["with errors"] == "1 unit" and table["pending"] == "6 units"
    assert table["correct"] == "3 units"
    assert table["accuracy"].startswith(f"{7 / 18:.2%} ")
    mean, se, (lo, hi) = mean_interval([2 / 3, 1 / 2, 0.0])
    assert table["accuracy 95% CI"] == f"{lo:.2%} – {hi:.2%} (± 1.96 SE over 3 samples)"
    assert table["accuracy by epoch"] == "1: 33.33% (1/3), 2: 100.00% (2/2), 3: 0.00% (0/1)"
    # a: 1 1 2 → "1" (right); b: 3 1 → tie, epoch 1's "3" (wrong); c: "4" (wrong).
    assert table["majority vote"] == "33.33% (1/3 samples; 1 tie (lowest epoch wins))"
    assert table["throughput"].endswith(" units/min")
    assert "pass@1" not in table
    assert table["not in dataset"].startswith("1 sample(s)")

    s = json.loads(run_cli(["stats", str(run), "--json"], dict(os.environ)).stdout)
    assert s["epochs"] == 3 and s["repeats"]["majority_vote"]["correct"] == 1
    assert s["accuracy"] == pytest.approx(7 / 18) and s["unknown_sample_ids"] == ["d"]
    r = run_cli(["stats", str(run), "--pass-at-k", "--no-majority-vote"], dict(os.environ))
    table = stats_table(r.stdout)
    assert "majority vote" not in table
    assert table["pass@1"] == f"{7 / 18:.2%} (3 samples)"
    # pass@3: only a (n = 3) can estimate it; b (n = 2) and c (n = 1) are left out.
    assert table["pass@3"] == "100.00% (1 sample, 2 with fewer than 3 scored epochs left out)"


def test_cli_stats_of_a_plain_run_prints_no_new_line(tmp_path):
    run = k_run(tmp_path / "plain", [erec("a", None), erec("b", None, correct=False)], samples=2, epochs=None)
    r = run_cli(["stats", str(run)], dict(os.environ))
    assert r.returncode == 0, r.stderr
    keys = list(stats_table(r.stdout))
    assert keys[:12] == ["run", "model", "dataset", "task", "status", "samples", "completed (ok)", "with errors",
                         "pending", "correct", "accuracy", "accuracy 95% CI"]
    assert not {"epochs", "accuracy by epoch", "majority vote", "samples × epochs"} & set(keys)
    assert stats_table(r.stdout)["accuracy 95% CI"].endswith("(Wilson)")


def test_cli_export_per_sample(tmp_path):
    run = _k3_run(tmp_path / "out")
    for per_sample, rows in ((False, 8), (True, 4)):
        path = tmp_path / f"x-{per_sample}.csv"
        r = run_cli(["export", str(run), "-o", str(path)] + (["--per-sample"] if per_sample else []),
                    dict(os.environ))
        assert r.returncode == 0, r.stderr
        got = pd.read_csv(path)
        assert len(got) == rows
    assert got["sample_id"].tolist() == ["a", "b", "c", "d"] and got["ok_epochs"].tolist() == [3, 2, 1, 1]
    assert got["in_dataset"].tolist() == [True, True, True, False]


def test_report_shows_the_repeats_table_with_the_stats_numbers(tmp_path):
    run = _k3_run(tmp_path / "out")
    out = tmp_path / "report.html"
    r = run_cli(["report", str(run), "-o", str(out)], dict(os.environ))
    assert r.returncode == 0, r.stderr
    doc = out.read_text()
    s = get_stats(run)
    table = doc[doc.index("<table class='repeats'>"):]
    table = table[:table.index("</table>")]
    values = dict(re.findall(r'data-key="(\w+)" data-value="([^"]*)"', table))
    assert json.loads(values["mean_accuracy"]) == pytest.approx(s["repeats"]["mean_accuracy"])
    assert json.loads(values["mean_accuracy_ci95"]) == pytest.approx(s["accuracy_ci95"])
    assert json.loads(values["epochs"]) == 3 and json.loads(values["majority_vote"]) == pytest.approx(1 / 3)
    assert json.loads(values["accuracy_by_epoch"]) == [e["accuracy"] for e in s["repeats"]["accuracy_by_epoch"]]
    assert "a · epoch 3" in doc  # the sample browser names the epoch of each row


def test_k_is_the_manifests_epochs_or_the_highest_epoch_recorded(tmp_path):
    # The manifest asks for 4 epochs, only 2 are written so far: K is 4, half the units pending.
    run = k_run(tmp_path / "k4", [erec("a", 1), erec("a", 2)], samples=2, epochs=4)
    s = get_stats(run)
    assert (s["epochs"], s["total_samples"], s["pending_samples"]) == (4, 8, 6)
    assert [e["completed"] for e in s["repeats"]["accuracy_by_epoch"]] == [1, 1, 0, 0]
    # A manifest value of the wrong type is said, and K comes from the records.
    bad = k_run(tmp_path / "bad", [erec("a", 1), erec("a", 3)], samples=1, epochs=None)
    manifest = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**manifest, "epochs": "3"}))
    s = get_stats(bad)
    assert s["epochs"] == 3 and "epochs is not a whole number" in s["manifest_problem"]


def test_errors_counts_units_and_names_how_many_samples_they_are(tmp_path):
    """`evalledger errors` on a repeated run: two epochs of one sample and one of another failed alike."""
    run = k_run(tmp_path / "out" / "k3e", [erec("a", 1, "error"), erec("a", 2, "error"), erec("a", 3),
                                           erec("b", 1), erec("b", 2, "error"), erec("b", 3)], samples=2)
    r = run_cli(["errors", "k3e", "--output-dir", str(tmp_path / "out")], dict(os.environ))
    assert r.returncode == 0, r.stderr
    assert "BadRequestError (HTTP 400): 3 (sample, epoch) unit(s) of 2 sample(s)" in r.stdout
    [group] = json.loads(run_cli(["errors", str(run), "--json"], dict(os.environ)).stdout)
    assert (group["count"], group["samples"], group["sample_ids"]) == (3, 2, ["a", "b"])
