"""The Python API (bart_ext.load) on a GPU: the demo's summarizer gives on CUDA what it gives on the CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "runs" / "demo" / "finetune" / "checkpoint_best.pt"  # scripts/gpu_check.sh carries it
TEXTS = ["We propose a new method for dependency parsing. It is fast and accurate on three treebanks.",
         "Machine translation of medical terms is hard for morphologically rich languages. We use analogies.",
         "This paper studies word embeddings for pairs of words and their relations in context."]


def outputs(model) -> tuple[list, list, list]:
    with torch.no_grad():
        greedy = model.summarize(TEXTS, preset="xsum", beam=1)
        beam = model.summarize(TEXTS, preset="cnn_dm", max_len_b=60, min_len=10)
        filled = model.fill_mask(["We propose a new <mask> for dependency parsing."], topk=3)
    return greedy, beam, [[token for token, _ in row] for row in filled]


@pytest.mark.cuda
def test_demo_checkpoint_on_cuda_equals_cpu():
    import bart_ext

    if not DEMO.is_file():
        pytest.skip(f"{DEMO} missing: run `make demo` (scripts/gpu_check.sh carries it)")
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 on both sides, so beams cannot part on rounding
    try:
        cpu = outputs(bart_ext.load(DEMO))
        model = bart_ext.load(DEMO, device="cuda")
        assert model.device.type == "cuda"
        assert outputs(model) == cpu
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
