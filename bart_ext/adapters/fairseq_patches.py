"""Every change ``import user_dir`` makes to fairseq itself, in one place (README, "What the plugin changes in fairseq").

Importing the plugin adds our registered components and fixes what is broken in fairseq 0.12 on
current PyTorch; it takes nothing away. Each patch wraps one fairseq function or class
attribute, changes behaviour only in the case it fixes, and is installed once (idempotent):

1. ``checkpoint_utils.load_checkpoint_to_cpu`` (resume, ``fairseq-generate --path``,
   ``load_model_ensemble_and_task``, hub ``from_pretrained``). torch >= 2.6 unpickles
   weights-only, so fairseq cannot read its own checkpoints: argparse-era files hold an
   ``argparse.Namespace``, older ones numpy scalars. Here the weights-only unpickler stays on,
   extended for that call only by ``FAIRSEQ_GLOBALS`` (plain data that fairseq's own writers
   put into checkpoints); anything else is refused naming the file and the object. A file the
   user trusts is named in ``BART_EXT_TRUSTED_CHECKPOINTS`` and read with ``weights_only=False``
   for that file alone (a context variable, so no process-wide environment change).
2. ``distributed.utils._broadcast_object_slow``: resuming on several ranks, rank 0 sends the
   loaded state (with its omegaconf config) to the others with ``torch.save``; torch >= 2.6's
   weights-only ``torch.load`` refuses it on the receiving ranks. These bytes were pickled by
   rank 0 of the same job from a state already loaded under (1), so they are read in full.
3. ``distributed.utils.call_main``: under ``torchrun`` with ``WORLD_SIZE`` > 1, stock fairseq
   trains N independent copies whenever its default world size is 1 (``--cpu``, one-GPU
   nodes), and on CPUs its torchrun branch divides by ``torch.cuda.device_count()`` (0). Here
   such a launch becomes one job (``env://``, rank and world from the environment). A world size
   given on the command line and pipeline-parallel set-ups keep fairseq's own path. With
   ``--cpu`` (or no CUDA) the backend is gloo, since NCCL cannot all-reduce CPU tensors.
   ``fairseq-hydra-train`` imports the plugin after ``call_main`` has run: scripts/hydra_train.py
   installs this module first, and ``check_one_job`` makes our models refuse to train as one of
   the independent copies that a stock launch leaves.
   Before that, our model's ``--bf16-autocast`` beside ``--fp16``/``--amp``/``--bf16`` is
   refused with a clear error (``check_precision``; other models are not looked at), and so is
   training, with any model, in a precision mode whose first step would fail inside fairseq: its
   ``--bf16`` (TPU mode) without ``torch_xla``, and ``--fp16`` with flattened gradients without a
   CUDA device (a ``torch.cuda`` call in fairseq's ``FP16Optimizer``).
4. ``models.distributed_fairseq_model.DistributedDataParallel``: fairseq passes
   ``device_ids=[device_id]``, which torch refuses for CPU modules; for a CPU module the device
   arguments are dropped. It stays a class, and ``isinstance`` against it answers as against
   torch's ``DistributedDataParallel``.
5. ``ngram_repeat_block.NGramRepeatBlock._no_repeat_ngram`` (fairseq issues #5206, #4709):
   without its CUDA extension (every CPU, most pip installs) fairseq's loop compares the last
   ``n - 1`` entries of the pad-filled token buffer, which are padding, so
   ``--no-repeat-ngram-size`` blocks nothing. Here it blocks on the generated prefix, with tensor
   operations on the decoding device (``bart_ext.ngram_block``). This changes the output of
   every fairseq model generated with ``--no-repeat-ngram-size`` on a CPU (to what the option
   promises; it is logged once, when generation first sets blocking up); ``BART_EXT_NGRAM_BLOCK=fairseq_stock`` restores fairseq's
   behaviour. The replacement is TorchScript-compatible, so ``torch.jit.script`` of fairseq's
   ``SequenceGenerator`` keeps working.
6. ``optim.amp_optimizer.AMPOptimizer.clip_grad_norm`` (``--amp``): fairseq unscales the
   gradients of the inner torch optimizer there, then ``step`` calls ``scaler.step`` on the
   fairseq wrapper; ``GradScaler`` keeps its state per ``id()`` of the object, so it unscales the
   same gradients again, for every optimizer: updates see gradients divided by the loss scale
   twice (Adam mostly shrugs that off, but epsilon then dominates; NVLAMB's ``max_grad_norm``
   never fires). Here ``clip_grad_norm`` unscales the wrapper, the object ``step`` steps, so the
   gradients are unscaled once and the wrapper's own ``step`` still runs.
7. ``data.encoders.gpt2_bpe.GPT2BPE.decode`` (``--bpe gpt2``): fairseq-generate writes a target's
   unknown tokens as ``<<unk>>`` (``Dictionary.string(escape_unk=True)``) and then decodes that
   string, but ``decode`` reads every token other than ``<unk>`` and ``<mask>`` as an integer: a
   reference with one unknown word stopped fairseq-generate with ``ValueError: invalid literal for
   int() with base 10: '<<unk>>'`` (met on the default data's validation split). Here any token that
   is not a number passes through as text, as ``<unk>`` always did; strings of numbers decode as
   before.
8. ``checkpoint_utils.PathManager.copy`` (saving checkpoints): fairseq writes the newest
   checkpoint atomically (a ``.tmp`` file, then a rename) but then copies it onto
   ``checkpoint_last.pt`` / ``checkpoint_best.pt`` in place, so a crash or a Ctrl-C during that
   copy left a truncated ``checkpoint_last.pt``, and the resume that should continue the run
   stopped on it. Here a copy onto a local file writes ``DST.tmp`` beside it and renames it over
   ``DST``: the old file stays whole until the new one is. Remote (iopath) paths keep fairseq's copy.
9. ``trainer.Trainer.load_checkpoint`` (``--restore-file``, ``--finetune-from-model``, resuming):
   any error while loading the weights (a dictionary of another size, another architecture) is
   re-raised by fairseq as ``Exception("Cannot load model parameters from checkpoint ...; please
   ensure that the architectures match.")``, the last line a user sees, which drops what the error
   said. Here that message gains the cause's type and text (the cause stays chained); every other
   error passes unchanged. For weights that do not fit the model (torch's list of missing, unexpected
   and resized keys, cut to its start here), it first names the architecture options in which the
   checkpoint's config and the run's differ (``model._name bart_small_preln (checkpoint) vs
   bart_tiny_preln (this run)``), with the overrides that match them.
10. ``models.bart.hub_interface.BARTHubInterface.__new__`` (``BARTModel.from_pretrained``): for one of our
   models it builds ``bart_ext.adapters.fairseq_hub.BartExtHubInterface``, fairseq's hub interface with the
   tokenizer the model was trained with (the data folder's BPE files, not fairseq's downloads; the space
   before a text's first word that our data preparation gives every text). fairseq's tokenization made
   the demo's summarizer start " Aachine" where ``bart_ext.load`` gave "Handling", and stopped offline
   on the download. The checkpoint reader (1) notes what each checkpoint's ``extra_state`` says about
   its text (``fairseq_hub.remember_text_convention``). Other models get fairseq's class unchanged.
11. ``distributed.utils.all_gather_list`` (``fairseq-validate`` on several ranks; training whose
   criterion's logging outputs cannot be summed): fairseq builds its exchange buffer with
   ``torch.cuda.ByteTensor``, so on a CPU job (gloo) it stopped with ``TypeError: type
   torch.cuda.ByteTensor not available``. Over a gloo group the objects travel through
   ``torch.distributed.all_gather_object`` instead, in rank order as fairseq returns them; NCCL groups
   keep fairseq's function.
12. ``nan_detector.NanDetector.add_hooks`` (the trainer's rerun of a step whose gradients were NaN/Inf,
   to name the module where they began): fairseq registers a module backward hook on every module,
   which torch >= 2 refuses for a module whose output is a dict holding no tensor directly (fairseq's
   transformer and our encoders return ``{"encoder_out": [x], ...}``): the rerun stopped with a bare
   ``StopIteration`` from torch's hook code, and fairseq's "gradients are Nan/Inf" never showed. The
   backward half now hooks the gradient of each output tensor instead (the same report: NaN or Inf
   "detected in output of MODULE, ..., backward"); the forward half is fairseq's.
"""
from __future__ import annotations

import contextvars
import functools
import io
import logging
import os
import pickle
import re
import shutil
import sys
import tarfile
import zipfile
from pathlib import Path

import torch

from bart_ext import hardware, switches
from bart_ext.convert.fairseq_layouts import DictionarySizeError
from bart_ext.ngram_block import block_repeated_ngrams

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# 1-2. Checkpoints on torch >= 2.6

class UntrustedCheckpointError(pickle.UnpicklingError):
    """A checkpoint holds a pickled object outside the allowlist."""


class UnreadableCheckpointError(RuntimeError):
    """A checkpoint path names an empty, truncated or corrupt file, or a PyTorch file that is not a
    fairseq checkpoint (a bare state dict, a transformers ``pytorch_model.bin``)."""


def _format_problem(f) -> str | None:
    """Why the open file ``f`` cannot be one torch.save wrote, from its size and first bytes; None
    if it may be (a zip archive with its directory, a pickle, a tar archive)."""
    try:
        start = f.tell()
        head = f.read(8)
        size = f.seek(0, os.SEEK_END)
        f.seek(start)
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None  # not a seekable file: torch.load says what it finds
    if size == 0:
        return "the file is empty"
    if head.startswith(b"PK"):
        whole = zipfile.is_zipfile(f)
        f.seek(start)
        return None if whole else (f"a zip archive without its directory ({size:,} bytes): truncated, as an "
                                   "interrupted save or copy leaves it")
    if head[:1] == b"\x80":  # a pickle: torch.save's format before 1.6 (fairseq's released BART files)
        return None
    tar = tarfile.is_tarfile(f)  # torch's format before 0.4
    f.seek(start)
    return None if tar else f"not a file torch.save writes ({size:,} bytes starting {head[:8]!r})"


def _not_a_checkpoint(state) -> str | None:
    """Why a loaded object is not a fairseq checkpoint (every one is a dict with a ``model`` entry)."""
    if isinstance(state, dict) and "model" in state:
        return None
    if not isinstance(state, dict):
        return f"it holds a {type(state).__name__}, not fairseq's dict with a 'model' entry"
    keys = list(state)
    shown = ", ".join(repr(k) for k in keys[:4]) + (", ..." if len(keys) > 4 else "")
    if keys and all(isinstance(v, torch.Tensor) for v in state.values()):
        return (f"it holds a bare state dict of {len(keys)} tensors ({shown}), not fairseq's dict with a 'model' "
                "entry; a transformers folder converts with `python scripts/convert.py from-hf DIR OUT`")
    return f"it holds a dict without a 'model' entry (keys: {shown or 'none'})"


def fairseq_globals() -> list:
    """What fairseq's own checkpoint writers pickle beyond torch's weights-only allowlist: plain data.

    ``argparse.Namespace`` (the ``args`` of every argparse-era checkpoint, fairseq's released BART
    files included) and numpy scalars and dtypes (older trainers stored losses as numpy floats).
    fairseq 0.12's ``save_state`` writes its config as plain containers (``OmegaConf.to_container``),
    so no omegaconf class is needed. A scalar pickled by numpy 1 names ``numpy.core``, by numpy 2
    ``numpy._core``: both names are accepted.
    """
    import argparse

    import numpy as np

    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    dtypes = {type(np.dtype(t)) for t in (np.float16, np.float32, np.float64, np.int32, np.int64, np.bool_)}
    return [argparse.Namespace, np.dtype, *dtypes, (scalar, "numpy.core.multiarray.scalar"),
            (scalar, "numpy._core.multiarray.scalar")]


# Keyword arguments fairseq's checkpoint reader passes to torch.load in this context (thread-safe).
_LOAD_KWARGS: contextvars.ContextVar[dict] = contextvars.ContextVar("bart_ext_torch_load", default={})


def _load_failure(err: Exception) -> str:
    first = str(err).strip().splitlines()[0][:200] if str(err).strip() else ""
    return f"torch.load failed on it: truncated, corrupt or not torch's ({type(err).__name__}{': ' + first if first else ''})"


class _TorchForFairseq:
    """What a patched fairseq module sees as ``torch``: torch itself, except that ``load`` adds the
    keyword arguments set for the current call (``weights_only=False`` for one trusted file), and
    names the file when it is empty, truncated or corrupt, or (``checkpoints``: the module reads
    fairseq checkpoints) not a fairseq checkpoint, where torch's errors do not name it."""

    def __init__(self, checkpoints: bool = False):
        self.checkpoints = checkpoints

    def __getattr__(self, name):
        return getattr(torch, name)

    def load(self, f, *args, **kwargs):
        name = getattr(f, "name", None) or (str(f) if isinstance(f, (str, os.PathLike)) else "the data received")
        problem = _format_problem(f)
        if problem is None:
            try:
                state = torch.load(f, *args, **{**kwargs, **_LOAD_KWARGS.get()})
            except pickle.UnpicklingError as e:
                full = _LOAD_KWARGS.get().get("weights_only") is False and not os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
                if not full:
                    raise  # the weights-only unpickler's refusal: safe_checkpoint_reader words it
                problem = _load_failure(e)
            except (RuntimeError, EOFError, KeyError, IndexError, ValueError) as e:
                problem = _load_failure(e)
            else:
                problem = _not_a_checkpoint(state) if self.checkpoints else None
                if problem is None:
                    return state
        raise UnreadableCheckpointError(f"{name}: not a readable fairseq checkpoint: {problem}. Nothing was loaded "
                                        "from it.")


class _FullUnpickling:
    """``weights_only=False`` for torch.load calls made by a patched fairseq module, in this context only."""

    def __enter__(self):
        self.token = _LOAD_KWARGS.set({"weights_only": False})

    def __exit__(self, *exc):
        _LOAD_KWARGS.reset(self.token)


def trusted_paths() -> set[Path]:
    return {Path(p).resolve() for p in switches.TRUSTED_CHECKPOINTS.get().split(os.pathsep) if p}


def _refusal(path: str, err: Exception) -> UntrustedCheckpointError:
    found = re.search(r"GLOBAL ([\w.]+)", str(err))
    what = f"a pickled `{found.group(1)}`" if found else "a pickled object outside the weights-only allowlist"
    name = switches.TRUSTED_CHECKPOINTS.name
    return UntrustedCheckpointError(
        f"{path}: refused to load: the file holds {what}. fairseq and bart_ext checkpoints hold only tensors, "
        "containers, plain values, argparse.Namespace and numpy scalars; unpickling other objects can run code "
        f"from the file. If you trust this file, load it deliberately: {name}={Path(path).resolve()} "
        f"(the variable names trusted files, separated by '{os.pathsep}')."
    )


def safe_checkpoint_reader(load_checkpoint_to_cpu):
    """Wrap fairseq's ``load_checkpoint_to_cpu`` with the policy of patch 1."""

    @functools.wraps(load_checkpoint_to_cpu)
    def load(path, arg_overrides=None, load_on_all_ranks=False):
        from bart_ext.adapters.fairseq_hub import remember_text_convention

        state = read(path, arg_overrides, load_on_all_ranks)
        remember_text_convention(state, arg_overrides)  # patch 10
        return state

    def read(path, arg_overrides, load_on_all_ranks):
        if Path(path).resolve() in trusted_paths():
            try:
                with _FullUnpickling():
                    return load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
            except pickle.UnpicklingError as e:  # torch's TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 wins over our list
                raise UntrustedCheckpointError(
                    f"{path}: named in {switches.TRUSTED_CHECKPOINTS.name}, but TORCH_FORCE_WEIGHTS_ONLY_LOAD is set, "
                    f"which makes torch unpickle weights only ({e.__class__.__name__})") from None
        try:
            with torch.serialization.safe_globals(fairseq_globals()):
                return load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
        except pickle.UnpicklingError as e:
            raise _refusal(str(path), e) from None

    load.bart_ext_patched = True
    return load


def intra_job_broadcast(broadcast_object_slow):
    """Patch 2: the receiving ranks read rank 0's bytes in full."""

    @functools.wraps(broadcast_object_slow)
    def broadcast(obj, src_rank, group, dist_device):
        with _FullUnpickling():
            return broadcast_object_slow(obj, src_rank, group, dist_device)

    broadcast.bart_ext_patched = True
    return broadcast


class _AtomicCopyPathManager:
    """Patch 8: fairseq's ``PathManager`` as checkpoint_utils sees it, with ``copy`` onto a local file
    made atomic (a temporary file beside the destination, then a rename over it)."""

    def __init__(self, path_manager):
        self._path_manager = path_manager

    def __getattr__(self, name):
        return getattr(self._path_manager, name)

    def copy(self, src_path: str, dst_path: str, overwrite: bool = False) -> bool:
        """As fairseq's local copy, which overwrites whatever ``overwrite`` says, but atomic."""
        pm = self._path_manager
        if pm.path_requires_pathmanager(str(src_path)) or pm.path_requires_pathmanager(str(dst_path)):
            return pm.copy(src_path, dst_path, overwrite=overwrite)
        tmp = f"{dst_path}.tmp"
        try:
            shutil.copyfile(src_path, tmp)
            os.replace(tmp, dst_path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return True


# ---------------------------------------------------------------------------------------------
# 3-4. torchrun on any device

TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


def torchrun_world() -> int:
    """The world size a torchrun (or torch.distributed.launch) environment declares, else 1."""
    if all(k in os.environ for k in TORCHRUN_VARS):
        return int(os.environ["WORLD_SIZE"])
    return 1


def world_size_given(argv: list[str] | None = None) -> bool:
    """Whether the command line sets the world size (argparse or hydra spelling)."""
    argv = sys.argv[1:] if argv is None else argv
    return any(a.split("=")[0] in ("--distributed-world-size", "distributed_training.distributed_world_size",
                                   "+distributed_training.distributed_world_size") for a in argv)


def uses_cuda(cfg) -> bool:
    return torch.cuda.is_available() and not cfg.common.cpu


def prepare_torchrun(cfg, argv: list[str] | None = None) -> None:
    """Patch 3 on a full fairseq config, before fairseq's own ``call_main`` runs."""
    dt = cfg.distributed_training
    world = torchrun_world()
    if (world > 1 and dt.distributed_init_method is None and not cfg.common.tpu and not dt.pipeline_model_parallel
            and dt.distributed_world_size == 1 and not world_size_given(argv)):
        dt.distributed_world_size = world
        if not uses_cuda(cfg) or torch.cuda.device_count() < 1:
            # fairseq's torchrun branch would compute rank % cuda.device_count(): do its job here.
            dt.distributed_init_method = "env://"
            dt.distributed_rank = int(os.environ["RANK"])
            dt.device_id = 0
            dt.distributed_no_spawn = True
    if dt.distributed_world_size > 1 and not uses_cuda(cfg) and dt.distributed_backend == "nccl":
        dt.distributed_backend = "gloo"  # NCCL cannot all-reduce CPU tensors


def check_one_job() -> None:
    """Refuse training as one of N independent copies of a ``torchrun`` job.

    That is what stock fairseq does under ``torchrun`` when its world size stays 1 and patch 3
    was not installed before its ``call_main`` ran: ``fairseq-hydra-train`` imports the plugin
    only inside its training function, too late. The copies would train on the same data and
    race to write the same checkpoints. Called where a training job builds our model; torch
    distributed is initialised by then in a job that fairseq set up as one.
    """
    if torchrun_world() <= 1 or "fairseq_cli.train" not in sys.modules or world_size_given():
        return  # not under torchrun, not training (fairseq-generate, the hub), or the world size asked for
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return
    raise RuntimeError(
        f"this process is rank {os.environ['RANK']} of a torchrun job of WORLD_SIZE {os.environ['WORLD_SIZE']}, "
        "but fairseq set it up as a job of its own (distributed_training.distributed_world_size 1): the ranks "
        "would train independent copies into one save_dir. fairseq-hydra-train loads --user-dir too late for the "
        "plugin to fix that; launch `torchrun ... scripts/hydra_train.py` (the same arguments) instead, or set "
        "distributed_training.distributed_world_size to WORLD_SIZE where fairseq's own launcher works (GPUs)")


def check_precision(cfg, training: bool = True) -> None:
    """``--bf16-autocast`` is a precision of its own (bf16 autocast over fp32 weights, no loss
    scaling): refuse it beside fairseq's fp16 and bf16 modes, which would cast the weights or scale
    the loss underneath it. ``training``: also refuse, for any model, the fairseq precision modes
    that cannot train on this machine (``check_fairseq_precision``)."""
    autocast, common = getattr(cfg.model, "bf16_autocast", False), cfg.common
    clash = [flag for flag, on in (("--fp16", common.fp16), ("--memory-efficient-fp16", common.memory_efficient_fp16),
                                   ("--amp", common.amp), ("--bf16", common.bf16)) if on]
    if autocast and clash:
        raise ValueError(
            f"--bf16-autocast (model.bf16_autocast) cannot be combined with {' and '.join(clash)}: pick one "
            "precision (--bf16-autocast on Ampere and later GPUs and on CPUs; --amp or --fp16 on V100/T4)")
    if training:
        check_fairseq_precision(cfg)
    if not autocast or uses_cuda(cfg):
        return
    slower = hardware.bf16_slower_than_fp32()
    if slower:
        logger.warning("--bf16-autocast: %s; a training step is likely slower than in fp32 (measure with "
                       "scripts/bench_train.py --sizes mid), so train in fp32 on this machine", slower)


def check_fairseq_precision(cfg) -> None:
    """Training in a fairseq precision mode that fails at its first step here, refused up front.

    On the command line fairseq's ``--bf16`` and ``--memory-efficient-bf16`` also set ``--tpu``
    (its bf16 is the TPU mode); without ``torch_xla`` the trainer then stopped with
    ``AttributeError: 'NoneType' object has no attribute 'xla_device'``. ``--fp16`` (or hydra's
    ``common.bf16``) without ``--memory-efficient-*`` or ``--fp16-no-flatten-grads`` builds
    fairseq's ``FP16Optimizer``, whose flattened fp32 master copy asks for the current CUDA device:
    without one it stopped with ``Torch not compiled with CUDA enabled`` (or, with ``--cpu`` on a
    GPU machine, put the master copy on the GPU). Both ways work with those flags, so nothing that
    trains is refused.
    """
    import importlib.util

    common = cfg.common
    if common.tpu and importlib.util.find_spec("torch_xla") is None:
        bf16 = [flag for flag, on in (("--bf16", common.bf16), ("--memory-efficient-bf16", common.memory_efficient_bf16))
                if on]
        given = f"{' and '.join(bf16)}, which in fairseq set --tpu (common.tpu)" if bf16 else "--tpu (common.tpu)"
        raise ValueError(
            f"{given}: fairseq then trains on a TPU, and torch_xla is not installed. For bf16 on a GPU or a CPU "
            "use --bf16-autocast (bart_*_preln models: bf16 matmuls over fp32 weights)")
    flattened = ((common.fp16 or common.bf16) and not common.tpu and not common.fp16_no_flatten_grads
                 and not common.memory_efficient_fp16 and not common.memory_efficient_bf16)
    if flattened and not uses_cuda(cfg):
        mode = "--fp16 (common.fp16)" if common.fp16 else "common.bf16"
        raise ValueError(
            f"{mode} without a CUDA device: fairseq's FP16Optimizer keeps its flattened fp32 master weights on the "
            "current CUDA device. On a CPU add --fp16-no-flatten-grads (common.fp16_no_flatten_grads=true) or use "
            "--memory-efficient-fp16 / --memory-efficient-bf16; or train in fp32, or with --bf16-autocast "
            "(bart_*_preln models) where bf16 matmuls are fast")


def torchrun_call_main(call_main):
    @functools.wraps(call_main)
    def wrapped(cfg, main, **kwargs):
        # fairseq-validate and the like share call_main; only training builds fairseq's optimizer wrappers
        check_precision(cfg, training=getattr(main, "__module__", None) == "fairseq_cli.train")
        prepare_torchrun(cfg)
        return call_main(cfg, main, **kwargs)

    wrapped.bart_ext_patched = True
    return wrapped


def cpu_safe_ddp(ddp_class):
    """Patch 4: a subclass of ``ddp_class`` that drops device arguments for CPU modules."""

    class _SameInstances(type(ddp_class)):
        # By MRO: torch's DDP is an ABC, whose own check would recurse through this subclass.
        def __instancecheck__(cls, obj):
            return ddp_class in type(obj).__mro__

        def __subclasscheck__(cls, sub):
            return isinstance(sub, type) and ddp_class in sub.__mro__

    class DistributedDataParallel(ddp_class, metaclass=_SameInstances):
        bart_ext_patched = True

        def __init__(self, module, device_ids=None, output_device=None, **kwargs):
            if next(module.parameters()).device.type == "cpu":
                device_ids, output_device = None, None  # torch's DDP takes no device ids for CPU modules
            super().__init__(module, device_ids=device_ids, output_device=output_device, **kwargs)

    return DistributedDataParallel


# ---------------------------------------------------------------------------------------------
# 5. Repeated n-gram blocking

def _no_repeat_ngram(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
    """bart_ext: blocking on the generated prefix (TorchScript-compatible)."""
    return block_repeated_ngrams(tokens[:, : step + 1], lprobs, self.no_repeat_ngram_size)


def _no_repeat_ngram_fairseq_loop(self, tokens, lprobs, bsz: int, beam_size: int, step: int):
    """fairseq's own loop, given the generated prefix: the reference for tests and benchmarks."""
    return self._fairseq_no_repeat_ngram(tokens[:, : step + 1], lprobs, bsz, beam_size, step)


def install_ngram_block(mode: str | None = None) -> str:
    """Select the n-gram blocking (``BART_EXT_NGRAM_BLOCK`` unless ``mode`` is given); returns the mode."""
    from fairseq import ngram_repeat_block

    mode = mode or switches.NGRAM_BLOCK.get()
    if mode not in switches.NGRAM_BLOCK.choices:
        raise ValueError(f"n-gram blocking mode {mode!r}: expected one of {', '.join(switches.NGRAM_BLOCK.choices)}")
    cls = ngram_repeat_block.NGramRepeatBlock
    if not hasattr(cls, "_fairseq_no_repeat_ngram"):
        cls._fairseq_no_repeat_ngram = cls._no_repeat_ngram  # fairseq's own, kept for the reference mode
    cls._no_repeat_ngram = {"bart_ext": _no_repeat_ngram, "fairseq_loop": _no_repeat_ngram_fairseq_loop,
                            "fairseq_stock": cls._fairseq_no_repeat_ngram}[mode]
    if getattr(cls, "_bart_ext_mode", None) != mode:
        cls._bart_ext_announced = False  # said again, once, at the next blocker this mode builds
    if not getattr(cls.__init__, "bart_ext_patched", False):
        cls.__init__ = _announcing_init(cls.__init__)
    cls._bart_ext_mode = mode
    return mode


def _announcing_init(init):
    """``NGramRepeatBlock.__init__`` that says once, when generation first sets up n-gram blocking (not
    at every import of the plugin, where it was the first line of every script's output), that bart_ext
    changed it."""
    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        init(self, *args, **kwargs)
        cls = type(self)
        if getattr(cls, "_bart_ext_mode", "fairseq_stock") != "fairseq_stock" and not cls._bart_ext_announced:
            cls._bart_ext_announced = True
            logger.info("bart_ext: --no-repeat-ngram-size blocks on the generated prefix (fixes fairseq #5206 for "
                        "every model without fairseq's CUDA extension); BART_EXT_NGRAM_BLOCK=fairseq_stock restores "
                        "fairseq's")

    __init__.bart_ext_patched = True
    return __init__


def amp_clip_grad_norm(self, max_norm, aggregate_norm_fn=None):
    """``AMPOptimizer.clip_grad_norm`` unscaling the object that ``AMPOptimizer.step`` steps (patch 6);
    the overflow handling and its messages are fairseq's."""
    self.scaler.unscale_(self.fp32_optimizer)
    grad_norm = self.fp32_optimizer.clip_grad_norm(max_norm, aggregate_norm_fn)
    if not torch.isfinite(grad_norm).all():
        new_loss_scale = self.next_loss_scale
        if new_loss_scale <= self.min_loss_scale:
            raise FloatingPointError(
                f"AMP: Minimum loss scale reached ({self.min_loss_scale}). Your loss is probably exploding. "
                f"Try restarting training or use fp32. {new_loss_scale}")
        logger.info("AMP: overflow detected, setting scale to to %s", new_loss_scale)
    return grad_norm


amp_clip_grad_norm.bart_ext_patched = True


def gpt2_decode(self, x: str) -> str:
    """``GPT2BPE.decode`` for patch 7: BPE ids are numbers; other tokens (``<unk>``, ``<mask>``,
    fairseq-generate's ``<<unk>>``) go to GPT-2's decoder as text, which passes them through."""
    return self.bpe.decode([int(tok) if tok.isascii() and tok.isdigit() else tok for tok in x.split()])


gpt2_decode.bart_ext_patched = True


# Model options that decide which parameters a model has and their shapes (fairseq's transformer/BART
# names and ours); dropout and the like may differ between a checkpoint and the run that loads it.
# (Not max_source/target_positions: fairseq-train's namespace holds the task's, which fine-tuning often cuts.)
_SHAPE_FIELD = re.compile(r"^(_name|arch|.*_layers|.*embed_dim|.*attention_heads|max_positions|"
                          r"post_ln|.*normalize_before|layernorm_embedding|share_.*|"
                          r"no_scale_embedding|encoder_learned_pos|decoder_learned_pos|no_token_positional_embeddings)$")
_CAUSE_CHARS = 600


def _model_options(model_cfg) -> dict:
    if model_cfg is None:
        return {}
    if hasattr(model_cfg, "items"):
        items = model_cfg.items()
    else:
        items = vars(model_cfg).items()
    options = {k: v for k, v in items if _SHAPE_FIELD.match(k) and v is not None}
    if "arch" in options and "_name" not in options:
        options["_name"] = options["arch"]
    options.pop("arch", None)
    return options


def architecture_differences(checkpoint_model_cfg, run_model_cfg) -> list[tuple[str, object, object]]:
    """``(field, checkpoint's value, this run's value)`` for every shape-deciding model option (architecture
    name, layers, widths, heads, positions, Pre-/Post-LN, sharing) set in both and set differently."""
    theirs, ours = _model_options(checkpoint_model_cfg), _model_options(run_model_cfg)
    return [(k, theirs[k], ours[k]) for k in sorted(theirs, key=lambda k: (k != "_name", k))
            if k in ours and theirs[k] != ours[k]]


def describe_architecture_differences(differences) -> str:
    """One sentence for patch 9's message: what differs, and the overrides that make the run match."""
    said = ", ".join(f"model.{k} {a} (checkpoint) vs {b} (this run)" for k, a, b in differences)
    hydra = " ".join(f"model.{k}={a}" for k, a, _ in differences)
    flags = []
    for k, a, _ in differences:
        flag = "--arch" if k == "_name" else "--" + k.replace("_", "-")
        flags.append(f"without {flag}" if a is False else flag if a is True else f"{flag} {a}")
    return (f"The checkpoint's model differs from this run's: {said}. Give the run the checkpoint's values "
            f"(fairseq-hydra-train: {hydra}; fairseq-train: {' '.join(flags)}).")


def _checkpoint_cfg(filename, group: str):
    """The ``model`` or ``task`` options a checkpoint was trained with (None where they cannot be read)."""
    from fairseq import checkpoint_utils

    try:
        state = checkpoint_utils.load_checkpoint_to_cpu(filename)
    except Exception:  # the error being reported is the load's own; this is only a better message
        return None
    cfg = state.get("cfg")
    if cfg is not None and cfg.get(group) is not None:
        return cfg[group]
    return getattr(state.get("args"), "__dict__", None)


def describe_training_dictionary(task_cfg) -> str:
    """Where the dictionary a checkpoint was trained with lies, if its ``task.data`` still holds it, and how
    to binarize data with it; ``""`` otherwise."""
    data = task_cfg.get("data") if hasattr(task_cfg, "get") else None
    if not isinstance(data, str) or not data:
        return ""
    folder = data.split(os.pathsep)[0]
    names = [n for n in ("dict.txt", "dict.source.txt") if os.path.isfile(os.path.join(folder, n))]
    if not names:
        return ""
    dictionary = os.path.join(folder, names[0])
    tokenizer = ""
    if all(os.path.isfile(os.path.join(folder, n)) for n in ("encoder.json", "vocab.bpe")):
        tokenizer = f" --gpt2 {folder}"
    elif os.path.isfile(os.path.join(folder, "sentencepiece.model")):
        tokenizer = f" --sentencepiece-model {os.path.join(folder, 'sentencepiece.model')}"
    return (f" The checkpoint was trained with the dictionary {dictionary}: binarize the data with it "
            f"(scripts/prepare_summarization.py or prepare_roles.py --dict {dictionary}{tokenizer}).")


def load_checkpoint_naming_the_cause(load_checkpoint):
    """Patch 9: fairseq's "Cannot load model parameters" error, followed by what went wrong: for weights
    that do not fit the model, first the architecture options in which checkpoint and run differ."""

    @functools.wraps(load_checkpoint)
    def load(self, filename, *args, **kwargs):
        try:
            return load_checkpoint(self, filename, *args, **kwargs)
        except Exception as err:
            cause = err.__cause__ or err.__context__
            if type(err) is not Exception or not str(err).startswith("Cannot load model parameters") or cause is None:
                raise
            said = str(cause)
            if isinstance(cause, DictionarySizeError):
                said += describe_training_dictionary(_checkpoint_cfg(filename, "task"))
            if isinstance(cause, RuntimeError) and said.startswith("Error(s) in loading state_dict"):
                run_cfg = getattr(getattr(self, "cfg", None), "model", None)
                differences = architecture_differences(_checkpoint_cfg(filename, "model"), run_cfg)
                if differences:
                    err = Exception(f"{err} {describe_architecture_differences(differences)}")
                if len(said) > _CAUSE_CHARS:  # torch names every missing, unexpected and resized key
                    said = f"{said[:_CAUSE_CHARS]} ... ({len(said) - _CAUSE_CHARS} more characters in the chained error)"
            raise Exception(f"{err} The cause: {type(cause).__name__}: {said}") from cause

    load.bart_ext_patched = True
    return load


# ---------------------------------------------------------------------------------------------

def _is_gloo(group) -> bool:
    import torch.distributed as dist

    try:
        return dist.get_backend(group) == "gloo"
    except (RuntimeError, ValueError, TypeError, AttributeError):  # not a process group (TPU lists, none yet)
        return False


def gloo_all_gather_list(all_gather_list):
    """Patch 11: fairseq's ``all_gather_list``, or ``all_gather_object`` over a gloo group."""

    @functools.wraps(all_gather_list)
    def gather(data, group=None, max_size=16384):
        import torch.distributed as dist
        from fairseq import utils
        from fairseq.distributed.utils import get_global_group

        chosen = get_global_group() if group is None else group
        if not _is_gloo(chosen):
            return all_gather_list(data, group=group, max_size=max_size)
        out = [None] * dist.get_world_size(group=chosen)
        dist.all_gather_object(out, utils.move_to_cpu(data), group=chosen)
        return out

    gather.bart_ext_patched = True
    return gather


def _output_tensors(x):
    """The tensors in a module's output, through dicts, lists and tuples."""
    if torch.is_tensor(x):
        yield x
    elif isinstance(x, dict):
        for v in x.values():
            yield from _output_tensors(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _output_tensors(v)


def nan_detector_add_hooks(self, module) -> None:
    """Patch 12: fairseq's forward hook, and for the backward a hook on each output tensor's gradient."""
    if self.forward:
        self.fhooks.append(module.register_forward_hook(self.fhook_fn))
    if self.backward:
        def on_output(mod, inp, output):
            for t in _output_tensors(output):
                if t.requires_grad:
                    t.register_hook(lambda grad, mod=mod: self.bhook_fn(mod, None, grad))

        self.bhooks.append(module.register_forward_hook(on_output))


nan_detector_add_hooks.bart_ext_patched = True


def install() -> None:
    """Install patches 1-12 (idempotent)."""
    from fairseq import checkpoint_utils
    from fairseq.distributed import utils as dist_utils
    from fairseq.models import distributed_fairseq_model as dfm

    for module in (checkpoint_utils, dist_utils):
        if not isinstance(module.torch, _TorchForFairseq):
            module.torch = _TorchForFairseq(checkpoints=module is checkpoint_utils)
    if not isinstance(checkpoint_utils.PathManager, _AtomicCopyPathManager):
        checkpoint_utils.PathManager = _AtomicCopyPathManager(checkpoint_utils.PathManager)
    if not getattr(checkpoint_utils.load_checkpoint_to_cpu, "bart_ext_patched", False):
        checkpoint_utils.load_checkpoint_to_cpu = safe_checkpoint_reader(checkpoint_utils.load_checkpoint_to_cpu)
    if not getattr(dist_utils._broadcast_object_slow, "bart_ext_patched", False):
        dist_utils._broadcast_object_slow = intra_job_broadcast(dist_utils._broadcast_object_slow)
    if not getattr(dist_utils.all_gather_list, "bart_ext_patched", False):
        dist_utils.all_gather_list = gloo_all_gather_list(dist_utils.all_gather_list)
    if not getattr(dist_utils.call_main, "bart_ext_patched", False):
        dist_utils.call_main = torchrun_call_main(dist_utils.call_main)
    if not getattr(dfm.DistributedDataParallel, "bart_ext_patched", False):
        dfm.DistributedDataParallel = cpu_safe_ddp(dfm.DistributedDataParallel)
    install_ngram_block()
    from fairseq.optim.amp_optimizer import AMPOptimizer

    AMPOptimizer.clip_grad_norm = amp_clip_grad_norm
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE

    GPT2BPE.decode = gpt2_decode
    from fairseq.trainer import Trainer

    if not getattr(Trainer.load_checkpoint, "bart_ext_patched", False):
        Trainer.load_checkpoint = load_checkpoint_naming_the_cause(Trainer.load_checkpoint)
    from fairseq.nan_detector import NanDetector

    NanDetector.add_hooks = nan_detector_add_hooks
    from fairseq.models.bart.hub_interface import BARTHubInterface

    from bart_ext.adapters.fairseq_hub import hub_for_our_models

    if not getattr(getattr(BARTHubInterface.__dict__.get("__new__"), "__func__", None), "bart_ext_patched", False):
        BARTHubInterface.__new__ = hub_for_our_models(BARTHubInterface)


install()
