"""fairseq under ``torchrun`` on any device: two fixes, applied when ``--user-dir user_dir`` is imported.

Stock fairseq 0.12 (``../shared/ENVIRONMENT.md``):

1. ``distributed.utils.infer_init_method`` returns early when
   ``--distributed-world-size`` is 1, its default without CUDA (and on one-GPU
   nodes), so ``torchrun --nproc-per-node 2 fairseq-train --cpu`` silently trains
   independent copies; on CPU its torchrun branch would also divide by
   ``torch.cuda.device_count()`` (0). Here a torchrun environment
   (``WORLD_SIZE`` > 1, ``RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) always becomes
   one job: ``env://`` init, rank and world from the environment, the device from
   ``LOCAL_RANK``, gloo when there is no CUDA (NCCL's default otherwise).
2. ``pytorch_ddp`` passes ``device_ids=[device_id]``, which torch refuses for CPU
   modules; for a CPU module the device arguments are dropped.

Both patches wrap the original functions and change nothing outside these cases.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def torchrun_world() -> int:
    """The world size a torchrun (or torch.distributed.launch) environment declares, else 1."""
    if all(k in os.environ for k in TORCHRUN_VARS):
        return int(os.environ["WORLD_SIZE"])
    return 1


def _patched_infer_init_method(original):
    def infer_init_method(cfg, force_distributed=False):
        if cfg.distributed_init_method is None and not cfg.tpu and torchrun_world() > 1:
            cfg.distributed_init_method = "env://"
            cfg.distributed_world_size = torchrun_world()
            cfg.distributed_rank = int(os.environ["RANK"])
            local = int(os.environ.get("LOCAL_RANK", 0))
            cfg.device_id = local % torch.cuda.device_count() if torch.cuda.is_available() else 0
            cfg.distributed_no_spawn = True  # torchrun started the processes
            if not torch.cuda.is_available() and cfg.distributed_backend == "nccl":
                cfg.distributed_backend = "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(cfg.device_id)
            return
        return original(cfg, force_distributed)

    infer_init_method._bart_ext_patched = True
    return infer_init_method


def _cpu_safe_ddp(ddp_class):
    def make(module, device_ids=None, output_device=None, **kwargs):
        if next(module.parameters()).device.type == "cpu":
            device_ids, output_device = None, None  # torch's DDP takes no device ids for CPU modules
        return ddp_class(module=module, device_ids=device_ids, output_device=output_device, **kwargs)

    make._bart_ext_patched = True
    return make


def install() -> None:
    from fairseq.distributed import utils as dist_utils
    from fairseq.models import distributed_fairseq_model as dfm

    if not getattr(dist_utils.infer_init_method, "_bart_ext_patched", False):
        dist_utils.infer_init_method = _patched_infer_init_method(dist_utils.infer_init_method)
    if not getattr(dfm.DistributedDataParallel, "_bart_ext_patched", False):
        dfm.DistributedDataParallel = _cpu_safe_ddp(dfm.DistributedDataParallel)


install()
