#!/usr/bin/env python
"""fairseq-hydra-train with the plugin's fixes to fairseq installed from the start (for torchrun).

``fairseq-hydra-train`` imports ``common.user_dir`` only inside its training function, after it
has decided the distributed set-up, so the plugin's torchrun fix (README, "What the plugin
changes in fairseq", patch 3) comes too late: under ``torchrun --nproc-per-node N`` on CPUs or
one-GPU nodes stock fairseq would train N independent copies into one save_dir (the plugin's
tasks refuse that, naming this script). This entry point installs the fixes, then runs
fairseq's own ``fairseq-hydra-train`` unchanged, with the same arguments:

    torchrun --nproc-per-node 2 scripts/hydra_train.py --config-dir configs/pretrain \\
        --config-name small task.data=DATA common.user_dir=$PWD/user_dir checkpoint.save_dir=DIR

Without torchrun it behaves exactly as ``fairseq-hydra-train``.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import bart_ext.adapters.fairseq_patches  # noqa: E402,F401  (installs the fixes on import)
from fairseq_cli.hydra_train import cli_main  # noqa: E402

if __name__ == "__main__":
    cli_main()
