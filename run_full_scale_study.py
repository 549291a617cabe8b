#!/usr/bin/env python3
"""Run the model × dataset grid of the full-scale study (the same command as `evalledger study`).

Example (a self-correction study on the embedded model, no key needed):

    python run_full_scale_study.py --models local/smollm2 --datasets gsm8k,mmlu-elementary-math \\
        --task self-correct --limit 5 --max-tokens 64 --yes

Or from a grid file (models each with their own base URL, key variable, concurrency, rate limits
and prices; datasets; tasks; shared options such as --epochs and --fewshot), after printing the
file a command line describes:

    python run_full_scale_study.py --models local/smollm2 --datasets gsm8k --epochs 3 --print-config > study.toml
    python run_full_scale_study.py --config study.toml --yes

Each pair is an ordinary evalledger run with a stable run ID, so rerunning resumes the grid.
"""

from evalledger.cli.study import study

if __name__ == "__main__":
    study(prog_name="run_full_scale_study.py")
