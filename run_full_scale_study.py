#!/usr/bin/env python3
"""Run the model × dataset grid of the full-scale study (the same command as `evalledger study`).

Example (a self-correction study on the embedded model, no key needed):

    python run_full_scale_study.py --models local/smollm2 --datasets gsm8k,mmlu-elementary-math \\
        --task self-correct --limit 5 --max-tokens 64 --yes

Each pair is an ordinary evalledger run with a stable run ID, so rerunning resumes the grid.
"""

from evalledger.cli import study

if __name__ == "__main__":
    study(prog_name="run_full_scale_study.py")
