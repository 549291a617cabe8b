"""Make docs/report.png: a synthetic study → `evalledger report` → a headless Chromium screenshot.

    python docs/make_report_png.py            # needs Debian's `chromium` (apt-get install chromium)

The study is synthetic (written with the real CheckpointManager, no API calls) so that the
screenshot shows every section: several models × datasets, costs, errors and a self-correction run.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from evalledger.ledger.manager import CheckpointManager
from evalledger.fsio.atomic import write_json_atomic

DOCS = Path(__file__).resolve().parent

RUNS = [  # model, dataset, accuracy, mean latency (s), cost per sample (USD), error rate
    ("openai/gpt-4o-mini", "gsm8k", 0.91, 2.1, 0.00021, 0.01),
    ("anthropic/claude-sonnet-4-5", "gsm8k", 0.95, 3.4, 0.0041, 0.02),
    ("vllm/Llama-3.1-8B-Instruct", "gsm8k", 0.78, 1.2, None, 0.04),  # self-hosted: price unknown
    ("openai/gpt-4o-mini", "mmlu-elementary-math", 0.83, 0.9, 0.00009, 0.005),
    ("anthropic/claude-sonnet-4-5", "mmlu-elementary-math", 0.9, 1.6, 0.0019, 0.0),
]


def write_run(out: Path, run_id: str, model: str, dataset: str, acc: float, lat: float, cost: float | None, err: float,
              n: int, rng: random.Random, self_correct: bool = False) -> None:
    run = out / run_id
    run.mkdir(parents=True)
    write_json_atomic(run / "manifest.json", {"run_id": run_id, "config": {"model": model}, "dataset": {"name": dataset},
                                              "task": "self_correct" if self_correct else "qa", "sample_count": n})
    recs = []
    for i in range(n):
        q = f"Question {i}: Janet has {rng.randint(2, 40)} ducks and buys {rng.randint(1, 9)} more. How many ducks?"
        ok = rng.random() >= err
        before = rng.random() < acc - 0.08
        correct = (before and rng.random() > 0.03) or (not before and rng.random() < 0.5) if self_correct else rng.random() < acc
        r = {"sample_id": f"{dataset[:4]}-{i:04d}", "status": "ok" if ok else "error", "attempts": 1, "shard": None,
             "model": model, "task": "qa", "prompt": [{"role": "user", "content": q}],
             "response": f"Janet ends up with some ducks.\n#### {i % 50}" if ok else None,
             "prediction": str(i % 50) if ok else None, "target": str(i % 50 if correct else i % 7) if ok else None,
             "score": correct if ok else None, "correct": correct if ok else None,
             "usage": {"input_tokens": rng.randint(90, 160), "output_tokens": rng.randint(40, 220)},
             "cost_usd": None if cost is None else round(cost * rng.uniform(0.7, 1.3), 7), "latency_s": round(rng.lognormvariate(0, 0.4) * lat, 3),
             "error": None if ok else {"type": rng.choice(["RateLimitError", "RateLimitError", "BadRequestError"]),
                                       "message": "HTTP 429: rate limit exceeded (retries exhausted)", "status_code": 429},
             "started_at": "2026-11-23T10:00:00.000Z", "finished_at": f"2026-11-23T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z"}
        if self_correct and ok:
            r["extra"] = {"correct_before": before, "correct_after": correct}
        recs.append(r)
    with CheckpointManager(run) as ledger:
        ledger.append_records(recs)


def main() -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("needs Chromium: apt-get install chromium")
    tmp = Path(tempfile.mkdtemp(prefix="evalledger-demo-"))
    rng = random.Random(7)
    for k, (model, ds, acc, lat, cost, err) in enumerate(RUNS):
        write_run(tmp / "study", f"{ds}_{model.split('/')[1][:18]}_{k}", model, ds, acc, lat, cost, err, 400, rng)
    write_run(tmp / "study", "gsm8k_gpt-4o-mini_self-correct", "openai/gpt-4o-mini", "gsm8k", 0.91, 4.0, 0.0005, 0.01,
              400, rng, self_correct=True)
    html = tmp / "report.html"
    subprocess.run([sys.executable, "-m", "evalledger", "report", str(tmp / "study"), "-o", str(html), "--samples", "5"],
                   check=True)
    args = [chromium, "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--no-first-run", "--disable-sync", f"--user-data-dir={tmp / 'chrome'}",
            f"--screenshot={DOCS / 'report.png'}", "--window-size=1280,2000", html.as_uri()]
    if os.geteuid() == 0:
        args.insert(2, "--no-sandbox")
    subprocess.run(args, check=True, capture_output=True, timeout=120)
    print(f"wrote {DOCS / 'report.png'} (report: {html})")


if __name__ == "__main__":
    main()
