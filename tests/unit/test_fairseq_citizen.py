"""Loading the plugin adds to fairseq and takes nothing away (bart_ext/adapters/fairseq_patches.py)."""
from __future__ import annotations

import argparse
import logging
import os

import pytest
import torch
from fairseq import checkpoint_utils, options, optim, tasks
from fairseq.models import distributed_fairseq_model as dfm
from fairseq.ngram_repeat_block import NGramRepeatBlock
from omegaconf import OmegaConf

import user_dir  # noqa: F401  (installs the patches, as --user-dir does)
from bart_ext.adapters import fairseq_patches
from tests.conftest import ROOT
from tests.helpers import dictionary, fake_task


# --- evaluation batches keep every sentence (bart_ext/adapters/eval_batches.py) ------------------------

def test_bart_denoising_validation_batches_every_sample(data_dir):
    """fairseq drops a last batch that is not a multiple of --required-batch-size-multiple (fairseq
    #5036); on fairseq-binarized data bart_denoising validates on every sample, and its training
    batches stay stock fairseq's. (bart_summarization: tests/unit/test_summarization_data.py.)"""
    from fairseq.tasks import FairseqTask

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data_dir / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln", "--optimizer", "nvlamb",
        "--lr", "0.01", "--criterion", "cross_entropy"])
    t = tasks.setup_task(args)
    t.load_dataset("train")
    t.load_dataset("valid")
    n_train, n_valid = len(t.dataset("train")), len(t.dataset("valid"))
    bsz = next(b for b in range(9, 64) if n_train % b % 8 and n_valid % b % 8)  # both end in a short batch

    def batches(get, split):
        itr = get(dataset=t.dataset(split), max_sentences=bsz, max_positions=(10**6, 10**6),
                  ignore_invalid_inputs=True, required_batch_size_multiple=8, disable_iterator_cache=True)
        return [len(b["id"]) for b in itr.next_epoch_itr(shuffle=False)]

    def stock(**kwargs):
        return FairseqTask.get_batch_iterator(t, **kwargs)

    assert sum(batches(stock, "valid")) < n_valid  # what fairseq does
    assert sum(batches(t.get_batch_iterator, "valid")) == n_valid
    assert batches(t.get_batch_iterator, "train") == batches(stock, "train")


# --- the argparse path: every registered option from a Namespace with only what a user typed -------------

@pytest.mark.parametrize("task,data", [("bart_denoising", "aclsum/bin"), ("bart_summarization", "aclsum_summ/bin")])
@pytest.mark.parametrize("arch", ["bart_tiny_preln", "bart_preln"])
def test_components_build_from_parse_args_and_arch_without_optional_flags(data_dir, task, data, arch):
    argv = [str(data_dir.parent / data), "--task", task, "--arch", arch, "--optimizer", "nvlamb", "--lr", "0.01"]
    if task == "bart_denoising":  # fairseq's criterion, and ours with every option
        argv += ["--criterion", "cross_entropy"]
    else:
        argv += ["--criterion", "bart_label_smoothed_cross_entropy", "--label-smoothing", "0.1",
                 "--report-accuracy", "--loss-chunk-tokens", "64", "--checkpoint-activations"]
    args = options.parse_args_and_arch(options.get_training_parser(), argv)
    t = tasks.setup_task(args)
    if arch == "bart_preln":  # the large preset: shapes only
        with torch.device("meta"):
            model = t.build_model(args)
        assert model.encoder.layers[0].fc1.weight.shape == (4096, 1024)
        return
    model = t.build_model(args)
    assert args.post_ln is False  # fairseq deletes model defaults on this path; the architecture fills them
    criterion = t.build_criterion(args)
    optimizer = optim.build_optimizer(args, list(model.parameters()))
    assert type(model).__name__ == "BartPreln" and model.encoder.layer_norm is not None  # Pre-LN by default
    assert not model.bf16_autocast and type(optimizer).__name__ == "FairseqNVLAMB"
    assert optimizer.optimizer.defaults["betas"] == (0.9, 0.999)
    ds = t.load_dataset("valid")
    sample = ds.collater([ds[i] for i in range(2)])
    sample["net_input"]["src_tokens"] = sample["net_input"]["src_tokens"][:, -100:].contiguous()  # within 512 positions
    sample["net_input"]["prev_output_tokens"] = sample["net_input"]["prev_output_tokens"][:, :100].contiguous()
    sample["target"] = sample["target"][:, :100].contiguous()
    assert model.encoder.checkpoint_activations == model.decoder.checkpoint_activations == (task != "bart_denoising")
    loss, sample_size, log = criterion(model, sample)
    if task != "bart_denoising":
        assert type(criterion).__name__ == "BartLabelSmoothedCrossEntropy" and criterion.chunk_tokens == 64
        assert {"nll_loss", "n_correct", "total"} <= set(log)
    loss.backward()
    assert torch.isfinite(loss) and sample_size > 0 and model.encoder.embed_tokens.weight.grad is not None


def test_nvlamb_betas_string_is_parsed_not_evaluated():
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(ROOT / "data" / "aclsum" / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln",
        "--optimizer", "nvlamb", "--lr", "0.01", "--lamb-betas", "(0.8, 0.99)"])
    params = [torch.nn.Parameter(torch.ones(3))]
    assert optim.build_optimizer(args, params).optimizer.defaults["betas"] == (0.8, 0.99)
    args.lamb_betas = "__import__('os').getcwd()"
    with pytest.raises(ValueError, match="lamb_betas"):
        optim.build_optimizer(args, params)


# --- checkpoints --------------------------------------------------------------------------------------

class Payload:
    """Any non-weight object; unpickling it runs this module's code. Records the environment it ran in."""

    def __init__(self):
        self.ran = False

    def __setstate__(self, state):
        state["env_switch_set"] = "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" in os.environ
        self.__dict__.update(state)


def _argparse_era_state(**extra) -> dict:
    import numpy as np

    args = argparse.Namespace(arch="transformer", task="translation", data="/tmp/x", lr=[0.1])
    return {"args": args, "model": {"w": torch.ones(2)}, "optimizer_history": [
        {"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqAdam", "lr_scheduler_state":
         {"best": np.float64(4.5)}, "num_updates": 3}], "extra_state": {"val_loss": np.float32(4.25), **extra},
        "last_optimizer_state": {}}


def test_argparse_era_checkpoint_with_namespace_and_numpy_scalars_loads_without_any_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("BART_EXT_TRUSTED_CHECKPOINTS", raising=False)
    path = tmp_path / "old.pt"
    torch.save(_argparse_era_state(), path)
    with pytest.raises(Exception, match="Namespace"):
        torch.load(path)  # torch's own default is untouched: weights-only refuses it
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path), arg_overrides={"data": "/elsewhere"})
    assert state["cfg"].task.data == "/elsewhere"  # fairseq's upgrade path ran on the Namespace
    assert float(state["extra_state"]["val_loss"]) == 4.25


def test_stock_fairseq_transformer_checkpoint_loads_with_the_plugin(tmp_path, data_dir, cli_env):
    from tests.integration.fairseq_run import run

    save = tmp_path / "ckpt"
    run(["fairseq-train", str(data_dir.parent / "aclsum_summ" / "bin"), "--task", "translation", "-s", "source",
         "-t", "target", "--arch", "transformer", "--encoder-layers", "1", "--decoder-layers", "1",
         "--encoder-embed-dim", "16", "--decoder-embed-dim", "16", "--encoder-ffn-embed-dim", "16",
         "--decoder-ffn-embed-dim", "16", "--encoder-attention-heads", "2", "--decoder-attention-heads", "2",
         "--share-all-embeddings", "--cpu", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048",
         "--max-update", "2", "--save-dir", str(save), "--no-epoch-checkpoints", "--max-source-positions", "2048",
         "--skip-invalid-size-inputs-valid-test"], cli_env)
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(save / "checkpoint_last.pt")], arg_overrides={"data": str(data_dir.parent / "aclsum_summ" / "bin")})
    assert type(models[0]).__name__ == "TransformerModel" and cfg.model.arch == "transformer"


def test_arbitrary_class_is_refused_naming_file_and_class(tmp_path, monkeypatch):
    monkeypatch.delenv("BART_EXT_TRUSTED_CHECKPOINTS", raising=False)
    path = tmp_path / "evil.pt"
    torch.save(_argparse_era_state(payload=Payload()), path)
    with pytest.raises(fairseq_patches.UntrustedCheckpointError) as err:
        checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert str(path) in str(err.value) and "test_fairseq_citizen.Payload" in str(err.value)


def test_trusted_file_is_read_in_full_without_touching_the_environment(tmp_path, monkeypatch):
    path = tmp_path / "trusted.pt"
    torch.save(_argparse_era_state(payload=Payload()), path)
    monkeypatch.setenv("BART_EXT_TRUSTED_CHECKPOINTS", str(path))
    monkeypatch.delenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", raising=False)
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    assert state["extra_state"]["payload"].env_switch_set is False  # weights_only=False for this call only
    # A user's TORCH_FORCE_WEIGHTS_ONLY_LOAD=1 (never unpickle in full) wins over the trusted list, and says so.
    monkeypatch.setenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(fairseq_patches.UntrustedCheckpointError, match="TORCH_FORCE_WEIGHTS_ONLY_LOAD"):
        checkpoint_utils.load_checkpoint_to_cpu(str(path))


# --- TorchScript: fairseq's generator still scripts, and blocks n-grams on the prefix -----------------

def _fairseq_transformer(d):
    from fairseq.models.transformer import TransformerModel, base_architecture

    args = argparse.Namespace(encoder_layers=1, decoder_layers=1, encoder_embed_dim=12, decoder_embed_dim=12,
                              encoder_ffn_embed_dim=14, decoder_ffn_embed_dim=14, encoder_attention_heads=3,
                              decoder_attention_heads=3, dropout=0.0, max_source_positions=64,
                              max_target_positions=64, share_all_embeddings=True)
    base_architecture(args)
    torch.manual_seed(0)
    return TransformerModel.build_model(args, fake_task(d)).eval()


def test_fairseq_sequence_generator_still_scripts_and_equals_eager_with_blocking():
    from fairseq.sequence_generator import SequenceGenerator

    d = dictionary(20)
    model = _fairseq_transformer(d)
    gen = SequenceGenerator([model], d, beam_size=3, max_len_b=12, no_repeat_ngram_size=2)
    scripted = torch.jit.script(gen)  # failed with "Can't redefine method" before
    src = torch.randint(d.nspecial, len(d), (2, 7))
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([7, 7])}}
    eager_out, script_out = gen(sample), scripted(sample)
    for a, b in zip(eager_out, script_out):
        assert torch.equal(a[0]["tokens"], b[0]["tokens"])
    for hyps in eager_out:
        toks = hyps[0]["tokens"].tolist()
        assert len(set(zip(toks, toks[1:]))) == len(toks) - 1  # no bigram repeated: blocking worked


def test_ngram_patch_logs_once_and_fairseq_stock_restores_fairseqs_method(caplog):
    """The notice comes once, when generation first builds a blocker, not when the plugin is installed
    (it was the first line every script printed, count_params.py and convert.py included)."""
    try:
        fairseq_patches.install_ngram_block("fairseq_stock")
        assert NGramRepeatBlock._no_repeat_ngram is NGramRepeatBlock._fairseq_no_repeat_ngram
        with caplog.at_level(logging.INFO):
            NGramRepeatBlock(3)  # fairseq's own blocking: nothing to say
            fairseq_patches.install_ngram_block("bart_ext")
            fairseq_patches.install_ngram_block("bart_ext")
            assert "fairseq #5206" not in caplog.text
            blocker = NGramRepeatBlock(3)
            NGramRepeatBlock(2)
        assert caplog.text.count("fairseq #5206") == 1 and blocker.no_repeat_ngram_size == 3
        assert NGramRepeatBlock._no_repeat_ngram is fairseq_patches._no_repeat_ngram
    finally:
        fairseq_patches.install_ngram_block("bart_ext")


@pytest.mark.parametrize("configured", [False, True])
def test_import_plugin_leaves_the_callers_logging_as_it_was(configured):
    """fairseq's wav2vec2_classification.py calls logging.basicConfig(level=DEBUG) when imported: a script
    that loads a model through bart_ext (bart_ext.load, the position fill, ...) must not start printing
    every library's INFO lines, and a script that set up its own logging keeps it."""
    import subprocess
    import sys

    setup = ("logging.basicConfig(level=logging.ERROR, format='mine %(message)s')\n" if configured else "")
    code = ("import logging\n" + setup +
            "before = [(type(h).__name__, h.formatter._fmt if h.formatter else None) for h in logging.getLogger().handlers]\n"
            "from bart_ext.adapters import import_plugin\n"
            "import_plugin()\n"
            "import fairseq.models, user_dir\n"  # loaded: the plugin is registered
            "root = logging.getLogger()\n"
            "after = [(type(h).__name__, h.formatter._fmt if h.formatter else None) for h in root.handlers]\n"
            "assert after == before, (before, after)\n"
            "assert root.level == (logging.ERROR if before else logging.WARNING), root.level\n"
            "logging.getLogger('bart_ext.test').info('an info line')\n"
            "logging.getLogger('bart_ext.test').error('an error line')\n"
            "from fairseq.models import ARCH_MODEL_REGISTRY\n"
            "assert 'bart_tiny_preln' in ARCH_MODEL_REGISTRY\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    assert "an info line" not in out and "fairseq #5206" not in out  # nothing at INFO, during import or after
    assert ("mine an error line" if configured else "an error line") in out  # errors still show, as set up


# --- distributed ----------------------------------------------------------------------------------------

def _full_cfg(**dt):
    from fairseq.dataclass.configs import FairseqConfig

    cfg = OmegaConf.structured(FairseqConfig)
    cfg.common.cpu = True
    for k, v in dt.items():
        setattr(cfg.distributed_training, k, v)
    return cfg


@pytest.fixture
def torchrun_env(monkeypatch):
    for k, v in dict(MASTER_ADDR="127.0.0.1", MASTER_PORT="29999", WORLD_SIZE="2", RANK="1").items():
        monkeypatch.setenv(k, v)


def test_torchrun_on_cpu_becomes_one_job_over_gloo(torchrun_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU machine, but --cpu
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    cfg = _full_cfg(distributed_world_size=1, distributed_backend="nccl")
    fairseq_patches.prepare_torchrun(cfg, argv=[])
    dt = cfg.distributed_training
    assert (dt.distributed_world_size, dt.distributed_rank, dt.distributed_backend) == (2, 1, "gloo")
    assert dt.distributed_init_method == "env://" and dt.distributed_no_spawn


@pytest.mark.parametrize("argv", [["--distributed-world-size", "1"], ["distributed_training.distributed_world_size=1"]])
def test_explicit_world_size_and_pipeline_parallel_keep_fairseqs_path(torchrun_env, argv):
    cfg = _full_cfg(distributed_world_size=1)
    fairseq_patches.prepare_torchrun(cfg, argv=argv)
    assert cfg.distributed_training.distributed_world_size == 1
    assert cfg.distributed_training.distributed_init_method is None
    cfg = _full_cfg(distributed_world_size=1, pipeline_model_parallel=True)
    fairseq_patches.prepare_torchrun(cfg, argv=[])
    assert cfg.distributed_training.distributed_init_method is None


def test_training_as_an_independent_copy_under_torchrun_is_refused(torchrun_env, monkeypatch):
    import sys

    monkeypatch.setattr(sys, "argv", ["fairseq-hydra-train", "common.user_dir=user_dir"])
    monkeypatch.setitem(sys.modules, "fairseq_cli.train", sys.modules.get("fairseq_cli.train", object()))
    with pytest.raises(RuntimeError, match=r"rank 1 of a torchrun job of WORLD_SIZE 2.*scripts/hydra_train\.py"):
        fairseq_patches.check_one_job()
    # ... but not where the world size was asked for, outside training, or without torchrun
    monkeypatch.setattr(sys, "argv", ["fairseq-hydra-train", "distributed_training.distributed_world_size=1"])
    fairseq_patches.check_one_job()
    monkeypatch.setattr(sys, "argv", ["fairseq-hydra-train"])
    monkeypatch.delitem(sys.modules, "fairseq_cli.train")
    fairseq_patches.check_one_job()
    monkeypatch.setitem(sys.modules, "fairseq_cli.train", object())
    monkeypatch.delenv("WORLD_SIZE")
    fairseq_patches.check_one_job()


def test_ddp_stays_a_class_for_isinstance_and_wraps_cpu_modules(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as TorchDDP

    assert isinstance(dfm.DistributedDataParallel, type)
    assert not isinstance(torch.nn.Linear(2, 2), dfm.DistributedDataParallel)
    assert issubclass(TorchDDP, dfm.DistributedDataParallel)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", world_size=1, rank=0)
    try:
        wrapped = dfm.DistributedDataParallel(torch.nn.Linear(2, 2), device_ids=[0], output_device=0)
        plain = TorchDDP(torch.nn.Linear(2, 2))
        assert isinstance(wrapped, dfm.DistributedDataParallel) and isinstance(plain, dfm.DistributedDataParallel)
        assert isinstance(wrapped, TorchDDP) and wrapped(torch.ones(1, 2)).shape == (1, 2)
    finally:
        dist.destroy_process_group()


# --- TF32 ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("no_tf32", [False, True])
def test_tf32_is_switched_on_only_without_no_tf32(monkeypatch, no_tf32):
    from tests.helpers import preln_args
    from user_dir.bart_preln import BartPreln

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        BartPreln.build_model(preln_args(no_tf32=no_tf32), fake_task(dictionary()))
        assert torch.backends.cuda.matmul.allow_tf32 is (not no_tf32)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


# --- --amp: gradients unscaled once (patch 6) ---------------------------------------------------------------

def _amp_step(clip_grad_norm, optimizer_name, device="cpu"):
    """One --amp step through fairseq's AMPOptimizer, with torch's CPU GradScaler standing in for CUDA's
    (CUDA's own on ``device="cuda"``)."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.optim.amp_optimizer import AMPOptimizer

    torch.manual_seed(0)
    model = torch.nn.Linear(6, 5).to(device)
    ref_model = torch.nn.Linear(6, 5).to(device)
    ref_model.load_state_dict(model.state_dict())
    x = torch.randn(4, 6).to(device)
    argv = ["--optimizer", optimizer_name, "--lr", "0.01", "--task", "translation", "--arch", "transformer", "data"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    amp = AMPOptimizer(cfg, list(model.parameters()), optim.build_optimizer(cfg.optimizer, list(model.parameters())))
    amp._grad_scaler = torch.amp.GradScaler(device, init_scale=2.0 ** 10)
    amp.backward(model(x).square().sum())
    clip_grad_norm(amp, 0.0)
    amp.step()
    ref = optim.build_optimizer(cfg.optimizer, list(ref_model.parameters()))
    ref_model(x).square().sum().backward()
    ref.step()
    return model, ref_model


@pytest.mark.parametrize("optimizer_name", ["nvlamb", "adam", "bart_adam"])
def test_amp_unscales_gradients_once(optimizer_name):
    from fairseq.optim.amp_optimizer import AMPOptimizer

    assert AMPOptimizer.clip_grad_norm is fairseq_patches.amp_clip_grad_norm
    model, ref = _amp_step(AMPOptimizer.clip_grad_norm, optimizer_name)
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-7, rtol=1e-6)


@pytest.mark.cuda
@pytest.mark.parametrize("optimizer_name", ["nvlamb", "adam", "bart_adam"])
def test_amp_unscales_gradients_once_on_cuda(optimizer_name):
    from fairseq.optim.amp_optimizer import AMPOptimizer

    model, ref = _amp_step(AMPOptimizer.clip_grad_norm, optimizer_name, device="cuda")
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-5)


def test_fairseqs_own_amp_clip_unscales_twice():
    """The bug patch 6 fixes, shown with fairseq's original method: the check above can fail."""
    def fairseq_clip(self, max_norm):  # fairseq 0.12's body: unscale the inner optimizer
        self.scaler.unscale_(self.optimizer)
        return self.fp32_optimizer.clip_grad_norm(max_norm)

    model, ref = _amp_step(fairseq_clip, "nvlamb")
    assert not torch.allclose(model.weight, ref.weight, atol=1e-6)


# --- --bf16-autocast: generation too, and never beside fairseq's fp16/bf16 modes --------------------------

def test_bf16_autocast_covers_generation():
    from fairseq.sequence_generator import SequenceGenerator

    from tests.helpers import preln_args
    from user_dir.bart_preln import BartPreln

    d = dictionary(40)
    model = BartPreln.build_model(preln_args(bf16_autocast=True), fake_task(d)).eval()
    src = torch.randint(4, 40, (2, 7))
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.tensor([7, 7])}}
    enc = model.encoder(src)
    step_logits, _ = model.decoder(torch.full((2, 1), d.eos()), enc, incremental_state={})
    assert step_logits.dtype == torch.bfloat16  # the decoder's matmuls ran in bf16, as fairseq-generate calls it
    with torch.no_grad():
        hyps = SequenceGenerator([model], d, beam_size=2, max_len_b=5).generate([model], sample)
    assert hyps[0][0]["positional_scores"].dtype == torch.float32  # fairseq's log-softmax upcasts
    model.bf16_autocast = False
    assert not model.encoder.bf16_autocast and not model.decoder.bf16_autocast
    assert model.decoder(torch.full((2, 1), d.eos()), enc, incremental_state={})[0].dtype == torch.float32


@pytest.mark.parametrize("flags,clash", [(["--amp"], "--amp"), (["--fp16"], "--fp16"),
                                         (["--memory-efficient-fp16"], "--memory-efficient-fp16"), ([], None)])
def test_bf16_autocast_beside_fairseqs_precisions_is_refused(data_dir, flags, clash):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as dist_utils

    argv = [str(data_dir / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln", "--bf16-autocast", *flags]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    ran = []
    if clash is None:
        dist_utils.call_main(cfg, lambda cfg, **kw: ran.append(cfg))
        assert ran
        return
    with pytest.raises(ValueError, match=f"--bf16-autocast .* cannot be combined with .*{clash}"):
        dist_utils.call_main(cfg, lambda cfg, **kw: ran.append(cfg))
    assert not ran  # refused before anything ran


@pytest.mark.parametrize("flags_line,native", [("flags\t\t: fpu avx2 avx512f avx512_bf16", True),
                                              ("flags\t\t: fpu avx2 amx_bf16", True),
                                              ("flags\t\t: fpu avx avx2 fma", False)])
def test_bf16_instructions_are_read_from_the_cpu_flags(tmp_path, flags_line, native):
    from bart_ext import hardware

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nvendor_id\t: X\n{flags_line}\n")
    assert hardware.cpu_bf16_matmul(cpuinfo) is native
    assert hardware.cpu_bf16_matmul(tmp_path / "absent") is None  # not Linux: unknown, no warning


@pytest.mark.parametrize("native,speeds,warning", [
    (True, (1200.0, 300.0), None),  # AMX: bf16 pays
    (True, (165.0, 320.0), "ran at 165 GFLOP/s in bf16 against 320"),  # AVX512-BF16 without AMX
    (False, None, "no bf16 matrix instructions"),  # emulated: not even measured
    (None, None, None),  # flags unknown (not Linux): no warning
])
def test_bf16_autocast_warns_where_bf16_is_slower_than_fp32(data_dir, monkeypatch, caplog, native, speeds, warning):
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as dist_utils

    from bart_ext import hardware

    measured = []

    def gflops():
        measured.append(True)
        return speeds

    monkeypatch.setattr(hardware, "cpu_bf16_matmul", lambda: native)
    monkeypatch.setattr(hardware, "bf16_and_fp32_gflops", gflops)
    argv = [str(data_dir / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln", "--bf16-autocast", "--cpu"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    ran = []
    with caplog.at_level("WARNING"):
        dist_utils.call_main(cfg, lambda cfg, **kw: ran.append(cfg))
    assert ran and bool(measured) == (native is True)
    bf16_warnings = [r.getMessage() for r in caplog.records if "--bf16-autocast" in r.getMessage()]
    if warning is None:
        assert not bf16_warnings
    else:
        assert len(bf16_warnings) == 1 and warning in bf16_warnings[0]


def test_the_bf16_probe_measures_both_precisions():
    from bart_ext import hardware

    bf16, fp32 = hardware.bf16_and_fp32_gflops(n=64, reps=2)
    assert bf16 > 0 and fp32 > 0


def test_checkpoints_from_before_new_model_options_still_load(data_dir, tmp_path):
    """A checkpoint whose model config predates --compile and --checkpoint-activations loads with
    both off (fairseq fills missing fields from the dataclass)."""
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    argv = [str(data_dir / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln"]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    saved = OmegaConf.to_container(cfg)
    for key in ("compile", "checkpoint_activations"):
        del saved["model"][key]
    path = tmp_path / "old.pt"
    torch.save({"cfg": saved, "model": model.state_dict(), "args": None, "extra_state": {},
                "optimizer_history": [{"criterion_name": "CrossEntropyCriterion", "optimizer_name": "FairseqNVLAMB",
                                       "lr_scheduler_state": {}, "num_updates": 0}]}, path)
    models, _, _ = checkpoint_utils.load_model_ensemble_and_task([str(path)])
    assert not models[0].encoder.checkpoint_activations and models[0].compiled_layers == []
    for name, tensor in model.state_dict().items():
        assert torch.equal(models[0].state_dict()[name], tensor), name


# --- GPT-2 BPE decoding of fairseq-generate's escaped unknowns (patch 7) ------------------------------

def test_gpt2_decode_passes_escaped_unknowns_through(data_dir):
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig

    gpt2 = data_dir / "gpt2"
    bpe = GPT2BPE(GPT2BPEConfig(gpt2_encoder_json=str(gpt2 / "encoder.json"), gpt2_vocab_bpe=str(gpt2 / "vocab.bpe")))
    ids = bpe.encode(" Handling terminology is an important matter.")
    assert bpe.decode(ids) == " Handling terminology is an important matter."
    assert bpe.decode(f"{ids} <unk> <mask>") == " Handling terminology is an important matter.<unk><mask>"
    # what fairseq-generate writes for a reference's unknown word (Dictionary.string(escape_unk=True))
    assert bpe.decode(f"<<unk>> {ids}") == "<<unk>> Handling terminology is an important matter."


def test_bart_gpt2_adds_the_first_words_space_and_decoding_takes_it_off(data_dir):
    """--bpe bart_gpt2 encodes a line as our data preparation does and decodes back to the line as given
    (until stop 59 its output began with the space it had added); a blank line is no tokens, not "Ġ"."""
    import user_dir  # noqa: F401
    from fairseq.data.encoders import build_bpe
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE, GPT2BPEConfig
    from omegaconf import OmegaConf

    gpt2 = data_dir / "gpt2"
    files = {"gpt2_encoder_json": str(gpt2 / "encoder.json"), "gpt2_vocab_bpe": str(gpt2 / "vocab.bpe")}
    ours = build_bpe(OmegaConf.create({"_name": "bart_gpt2", **files}))
    plain = GPT2BPE(GPT2BPEConfig(**files))
    text = "Handling terminology is an important matter."
    assert ours.encode(text) == ours.encode("  " + text) == plain.encode(" " + text) != plain.encode(text)
    assert ours.decode(ours.encode(text)) == text
    assert plain.decode(ours.encode(text)) == " " + text
    assert ours.encode("") == ours.encode("  ") == ""
    # a mask (fairseq-interactive with a pretrained model): the dictionary's symbol between the spans as
    # fairseq's BART fill_mask encodes them (the span before a mask without its trailing space), only the
    # first span with the first word's space
    assert ours.encode("We propose a new <mask> for parsing.") == (
        f"{plain.encode(' We propose a new')} <mask> {plain.encode(' for parsing.')}")
    assert ours.encode("<mask> is a task (<mask>).") == f"<mask> {plain.encode(' is a task (')} <mask> {plain.encode(').')}"
    assert ours.decode(ours.encode("A <mask>.")) == "A<mask>."  # the space before a mask is the mask's


@pytest.mark.parametrize("flags,refused", [
    (["--bf16"], "--bf16, which in fairseq set --tpu .* torch_xla is not installed"),
    (["--memory-efficient-bf16"], "--memory-efficient-bf16, which in fairseq set --tpu"),
    (["--fp16"], r"--fp16 \(common.fp16\) without a CUDA device: .* --fp16-no-flatten-grads"),
    (["--fp16", "--fp16-no-flatten-grads"], None),
    (["--memory-efficient-fp16"], None),
    (["--amp"], None),
])
def test_fairseq_precisions_that_cannot_train_here_are_refused_before_training(data_dir, flags, refused):
    """On a CPU, fairseq's --bf16 (TPU mode) stopped in the trainer with "'NoneType' object has no
    attribute 'xla_device'" and --fp16 in FP16Optimizer with "Torch not compiled with CUDA enabled";
    fairseq-train (its ``main``) is refused before anything runs, naming the flag and the way that
    works. fairseq-validate (another ``main``) is not training and keeps fairseq's behaviour."""
    import importlib.util

    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.distributed import utils as dist_utils

    from bart_ext.adapters import fairseq_patches

    if torch.cuda.is_available() or importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("these modes train on this machine")
    argv = [str(data_dir / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln", "--cpu", *flags]
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(options.get_training_parser(), argv))
    ran = []

    def validate_main(cfg, **kwargs):
        ran.append(cfg)

    validate_main.__module__ = "fairseq_cli.validate"
    dist_utils.call_main(cfg, validate_main)  # not training: never refused
    assert ran
    if refused is None:
        fairseq_patches.check_precision(cfg, training=True)
        return
    import fairseq_cli.train

    with pytest.raises(ValueError, match=refused):
        dist_utils.call_main(cfg, fairseq_cli.train.main)  # raised before fairseq_cli.train.main starts


# --- patch 12: fairseq's NanDetector on models whose outputs are dicts --------------------------------

@pytest.mark.parametrize("which", ["ours", "fairseq"])
def test_nan_detector_names_the_module_where_gradients_turn_nan(which, caplog):
    """fairseq's trainer reruns a step whose gradients were NaN/Inf under NanDetector. Its module backward
    hooks stopped with a bare StopIteration in torch's hook code on any encoder returning fairseq's dict
    ({"encoder_out": [x], ...}): ours and fairseq's own transformer. Now the rerun completes and names
    the first module whose output gradient is NaN, in the forward's order as fairseq reports it."""
    from fairseq.nan_detector import NanDetector

    from tests.helpers import preln_args
    from tests.unit.test_model import batch, fairseq_bart
    from user_dir.bart_preln import BartPreln

    d = dictionary()
    if which == "ours":
        model = BartPreln.build_model(preln_args(), fake_task(d))
    else:
        model = fairseq_bart(d, encoder_layers=1, decoder_layers=1, encoder_embed_dim=12, decoder_embed_dim=12,
                             encoder_ffn_embed_dim=14, decoder_ffn_embed_dim=14, encoder_attention_heads=3,
                             decoder_attention_heads=3, max_source_positions=64, max_target_positions=64)
    src, lengths, tgt = batch(d)
    poisoned = model.decoder.layer_norm if which == "ours" else model.decoder.layers[-1].final_layer_norm
    # the gradient that reaches this LayerNorm's output is NaN
    def poison(module, inputs, out):
        out.register_hook(lambda g: torch.full_like(g, float("nan")))

    handle = poisoned.register_forward_hook(poison)
    with caplog.at_level(logging.WARNING, logger="fairseq.nan_detector"), NanDetector(model) as detector:
        out, _ = model(src, lengths, tgt)
        out.float().sum().backward()
    handle.remove()
    assert detector.has_printed_b and not detector.has_printed_f
    reports = [r.getMessage() for r in caplog.records if "detected in output of" in r.getMessage()]
    assert reports and reports[0].startswith("NaN detected in output of") and reports[0].endswith("backward")
    assert not any(h for h in (poisoned._forward_hooks, model._forward_hooks))  # the detector's hooks are gone
