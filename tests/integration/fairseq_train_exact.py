"""`fairseq-train` with scalars logged at full precision (fairseq rounds the loss to 3 decimals).

Only the logging changes; training is fairseq_cli.train.cli_main untouched.
Usage: python tests/integration/fairseq_train_exact.py <fairseq-train arguments>
"""
from fairseq.logging import metrics

_log_scalar = metrics.log_scalar


def log_scalar_unrounded(key, value, weight=1, priority=10, round=None):
    _log_scalar(key, value, weight, priority, None)


metrics.log_scalar = log_scalar_unrounded

if __name__ == "__main__":
    from fairseq_cli.train import cli_main

    cli_main()
