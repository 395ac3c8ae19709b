"""--compile: torch.compile of the layers equals eager; a compiler failure falls back with a warning."""
from __future__ import annotations

import logging

import pytest
import torch

from tests.helpers import dictionary, fake_task, preln_args
from tests.unit.test_model import batch
from user_dir.bart_preln import BartPreln


def _grads(model, src, lengths, tgt):
    model.zero_grad(set_to_none=True)
    out = model(src, lengths, tgt)[0]
    (out.float() ** 2).mean().backward()
    return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_compiled_layers_equal_eager_and_keep_parameter_names(caplog):
    d = dictionary()
    eager = BartPreln.build_model(preln_args(), fake_task(d)).train()
    compiled = BartPreln.build_model(preln_args(compile=True), fake_task(d)).train()
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no _orig_mod. prefixes
    compiled.load_state_dict(eager.state_dict())
    assert len(compiled.compiled_layers) == 4
    src, lengths, tgt = batch(d)
    from torch._dynamo.utils import counters

    breaks = sum(counters["graph_break"].values())
    with caplog.at_level(logging.INFO):
        out_c, g_c = _grads(compiled, src, lengths, tgt)
    assert any("layers compiled in" in r.message for r in caplog.records)
    # each layer one graph: the masked path (the CPU's) breaks none (the packed one, CUDA's, does:
    # scripts/bench_gpu_mfu.py counts them)
    assert sum(counters["graph_break"].values()) == breaks
    out_e, g_e = _grads(eager, src, lengths, tgt)
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=1e-5)
    for name in g_e:
        torch.testing.assert_close(g_c[name], g_e[name], atol=1e-5, rtol=1e-4, msg=name)
    # another length, no padding: still equal (dynamic shapes; no error, no eager fallback)
    src2, tgt2 = src[:, 3:], tgt[:, :4]
    torch.testing.assert_close(compiled(src2, lengths, tgt2)[0], eager(src2, lengths, tgt2)[0], atol=1e-5, rtol=1e-5)
    assert compiled.compiled_layers


def _failing(exc):
    def call(*args, **kwargs):
        raise exc
    return call


def test_a_compiler_failure_falls_back_to_eager_with_a_warning(caplog):
    d = dictionary()
    model = BartPreln.build_model(preln_args(compile=True), fake_task(d)).eval()
    for layer in model.compiled_layers:  # what a machine without a working C++ compiler raises at first call
        layer._compiled_call_impl = _failing(torch._dynamo.exc.TorchDynamoException("no C++ compiler found"))
    src, lengths, tgt = batch(d)
    with caplog.at_level(logging.WARNING):
        out = model(src, lengths, tgt)[0]
    assert any("torch.compile failed" in r.message and "no C++ compiler" in r.message for r in caplog.records)
    assert model.compiled_layers == [] and all(layer._compiled_call_impl is None for layer in model.modules()
                                               if hasattr(layer, "self_attn"))
    eager = BartPreln.build_model(preln_args(), fake_task(d)).eval()
    eager.load_state_dict(model.state_dict())
    torch.testing.assert_close(out, eager(src, lengths, tgt)[0])


def test_other_errors_are_not_swallowed():
    d = dictionary()
    model = BartPreln.build_model(preln_args(compile=True), fake_task(d)).eval()
    for layer in model.compiled_layers:
        layer._compiled_call_impl = _failing(ValueError("a real bug"))
    src, lengths, tgt = batch(d)
    with pytest.raises(ValueError, match="a real bug"):
        model(src, lengths, tgt)


def test_compile_and_checkpoint_flags_parse_from_the_command_line(data_dir):
    from fairseq import options

    import user_dir  # noqa: F401

    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data_dir / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln", "--compile",
        "--checkpoint-activations", "--criterion", "bart_cross_entropy", "--loss-chunk-tokens", "128"])
    assert args.compile is True and args.checkpoint_activations is True and args.loss_chunk_tokens == 128
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data_dir / "bin"), "--task", "bart_denoising", "--arch", "bart_tiny_preln"])
    assert args.compile is False and args.checkpoint_activations is False
