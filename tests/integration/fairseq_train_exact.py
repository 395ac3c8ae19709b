"""`fairseq-train` with scalars logged at full precision (fairseq rounds the loss to 3 decimals).

Only the logging changes; training is fairseq_cli.train.cli_main untouched. With
``EXACT_DUMP_WEIGHTS=DIR`` every process also writes its final model weights to
``DIR/rank{RANK}.pt`` (fairseq saves checkpoints from rank 0 only; tests compare ranks).
Usage: python tests/integration/fairseq_train_exact.py <fairseq-train arguments>
"""
import os

from fairseq import trainer as trainer_module
from fairseq.logging import metrics

_log_scalar = metrics.log_scalar
_trainers = []


def log_scalar_unrounded(key, value, weight=1, priority=10, round=None):
    _log_scalar(key, value, weight, priority, None)


metrics.log_scalar = log_scalar_unrounded
_init = trainer_module.Trainer.__init__


def _remember(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    _trainers.append(self)


trainer_module.Trainer.__init__ = _remember

if __name__ == "__main__":
    import torch
    from fairseq_cli.train import cli_main

    cli_main()
    dump = os.environ.get("EXACT_DUMP_WEIGHTS")
    if dump and _trainers:
        os.makedirs(dump, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in _trainers[-1].model.state_dict().items()}
        torch.save(state, os.path.join(dump, f"rank{os.environ.get('RANK', '0')}.pt"))
