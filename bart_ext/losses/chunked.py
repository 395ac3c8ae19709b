"""Output projection, log-softmax and (label-smoothed) NLL in chunks of tokens, with its own backward.

A BART step's largest activations are its (tokens x vocabulary) logits: with the 50k GPT-2
dictionary, 2,048 target tokens make 400 MiB of fp32 logits, as much again for the log-softmax and
for each of their gradients. Here the projection ``hidden @ weight.T`` runs on ``chunk`` tokens at a
time; each chunk's loss and its gradient with respect to the logits are computed at once (the
gradient of softmax cross-entropy is ``softmax - onehot``, no second pass needed), turned into the
gradients of ``hidden`` and ``weight`` by two matmuls, and the chunk's logits are freed. What stays
is one (tokens x width) and one (vocabulary x width) gradient: the same approach as Liger Kernel's
FusedLinearCrossEntropy (which we read, not copied), written for fairseq's criteria.

Precision: the matmuls run in the autocast dtype when autocast is on (bf16/fp16, as the rest of the
model does), the log-sum-exp, the loss and the logits' gradient in fp32, and the weight's gradient
accumulates in fp32 across chunks. Under bf16 on a CPU with MKL's bf16 x bf16 -> fp32 product
(``bart_ext/bf16_gemm.py``) the three products write fp32 themselves: the logits are not rounded to
bf16, and the weight's gradient accumulates inside the product.

Label smoothing follows fairseq's ``label_smoothed_nll_loss``: with ``eps_i = eps / (V - 1)``,
``loss = (1 - eps - eps_i) * nll + eps_i * sum_v(-log p_v)``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from bart_ext import bf16_gemm

# Elements of one chunk's fp32 logits (64 MiB): small next to a step's other activations, large
# enough that each chunk's (chunk x width) @ (width x vocabulary) matmul runs at full speed.
CHUNK_ELEMENTS = 16 * 1024 * 1024


def auto_chunk_tokens(vocab_size: int) -> int:
    """Tokens per chunk for a vocabulary: a power of two between 64 and 4,096 near ``CHUNK_ELEMENTS / V``."""
    tokens = 64
    while tokens * 2 * vocab_size <= CHUNK_ELEMENTS and tokens < 4096:
        tokens *= 2
    return tokens


def _padded_row(vocab: int, dtype: torch.dtype) -> int:
    """``vocab`` rounded up to whole 64-byte lines of ``dtype``: the row length of the chunk buffers.
    A (512 x 512) @ (512 x V) fp32 matmul ran at 98-105 GFLOP/s into rows of 18,617 and at 146-154
    into rows of 18,624 (MKL, 2 threads, a 2-core AMD EPYC, 2026-12-07; 101 against 147 for 50,265)."""
    per_line = max(64 // torch.empty((), dtype=dtype).element_size(), 1)
    return -(-vocab // per_line) * per_line


def _compute_dtype(device_type: str, default: torch.dtype) -> torch.dtype:
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return default


def add_through(acc: Tensor, low: Tensor, staging: Tensor) -> None:
    """``acc += low`` for an fp32 ``acc`` and a bf16/fp16 ``low`` of the same 2-d shape, casting ``low``
    block by block of rows into ``staging``'s memory (any contiguous tensor of ``acc``'s dtype, whose
    contents are overwritten). On a CPU a mixed-dtype ``add_`` first allocates a full fp32 copy of
    ``low``; for the (V x C) weight gradient its page faults cost 8x the add itself (18.6k x 512 on a
    2-core Xeon: 12.4 against 1.5 ms). Where ``staging`` cannot hold one row, the plain ``add_``."""
    flat = staging.view(-1)
    rows = flat.numel() // max(acc.size(1), 1)
    if rows == 0:
        acc.add_(low)
        return
    for start in range(0, acc.size(0), rows):
        block = low[start : start + rows]
        acc[start : start + rows].add_(flat[: block.numel()].view_as(block).copy_(block))


def _count_correct(lp: Tensor, target: Tensor) -> Tensor:
    """How many rows of ``lp`` (c, V) have their first maximum at ``target`` (c,): ``argmax(-1) ==
    target`` counted, without an argmax over every row (which runs at a tenth of a max's speed on a
    CPU: 8.4 against 0.8 ms for 512 x 18.6k). A row counts when its target's value is the row's
    maximum and no other entry equals it; the rare rows with a tie take the argmax."""
    best = lp.amax(-1)
    hit = lp.gather(1, target.unsqueeze(1)).squeeze(1).eq(best)
    if not bool(hit.any()):
        return hit.sum()
    rows = hit.nonzero().squeeze(1)
    cand = lp.index_select(0, rows)
    ties = cand.eq(best.index_select(0, rows).unsqueeze(1)).sum(-1).gt(1)
    n = rows.numel() - ties.sum()
    if bool(ties.any()):
        tied = ties.nonzero().squeeze(1)
        n = n + cand.index_select(0, tied).argmax(-1).eq(target.index_select(0, rows.index_select(0, tied))).sum()
    return n


class _FusedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, target: Tensor, ignore_index: int, eps: float,
                chunk: int, compute_dtype: torch.dtype, count_correct: bool):
        vocab = weight.size(0)
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(compute_dtype, torch.float32)  # fp32, or fp64 in gradient checks
        dev = hidden.device
        loss = torch.zeros((), dtype=acc, device=dev)
        nll = torch.zeros((), dtype=acc, device=dev)
        n_correct = torch.zeros((), dtype=torch.long, device=dev)
        # Padding rows add nothing to the loss and get zero gradients: they are left out before the
        # matmuls (fairseq's criteria project them too), so every row below counts with weight 1.
        keep = target.ne(ignore_index)
        rows_kept = None
        if not bool(keep.all()):
            rows_kept = keep.nonzero().squeeze(1)
            hidden_all, hidden, target = hidden, hidden.index_select(0, rows_kept), target.index_select(0, rows_kept)
        n = hidden.size(0)
        w = weight.to(compute_dtype)
        low = compute_dtype != acc  # matmuls in bf16/fp16, the rest in fp32
        eps_i = eps / (vocab - 1) if eps else 0.0
        on_target = 1.0 - eps - eps_i  # weight of the NLL term (1 without smoothing)
        scale = on_target + eps_i * vocab  # the softmax's weight in the logits' gradient
        grad_h = torch.empty_like(hidden) if need_h else None
        # The first chunk writes the weight's gradient, later ones add to it (no zero-fill of V x C).
        grad_w = torch.empty(weight.shape, dtype=acc, device=dev) if need_w else None
        if need_w and n == 0:
            grad_w.zero_()
        # Buffers reused by every chunk: on a CPU a fresh (chunk x V) tensor costs more (page faults)
        # than the arithmetic done in it. Their rows are padded to whole 64-byte lines and the chunk's
        # (c x V) views into them are what the matmuls read and write: with an odd row length (GPT-2's
        # 50,265, a corpus' 18,617) MKL wrote the logits at two thirds of its speed (_padded_row).
        # The log-softmax runs over whole padded rows whose padding holds -inf, so it adds nothing; the
        # padding holds 0 again before the chunk's gradient matmuls, which may read it: oneDNN's bf16
        # kernels on AMX read a strided operand's row tail (the -inf there times the other operand's
        # zero padding made every gradient NaN at widths up to 64, 2026-12-07).
        rows = max(min(chunk, n), 1)
        lprobs_rows = torch.empty(rows, _padded_row(vocab, acc), dtype=acc, device=dev)
        lprobs = lprobs_rows[:, :vocab]
        # fp32 logits become their log-softmax in place on a CPU (its kernel finishes a row before
        # writing it; the fp64 tests check it); elsewhere, and for bf16/fp16 logits, a second buffer.
        in_place = not low and dev.type == "cpu"
        if in_place:
            logits_rows, logits = lprobs_rows, lprobs
        else:
            logits_rows = torch.empty(rows, _padded_row(vocab, compute_dtype), dtype=compute_dtype, device=dev)
            logits = logits_rows[:, :vocab]
            logits_rows[:, vocab:].zero_()  # only the (c x V) view is written
        # bf16 on a CPU with MKL's bf16 x bf16 -> fp32 product: the logits are written in fp32 into
        # the log-softmax's buffer, the weight's gradient accumulates in fp32 inside the product and
        # the hidden states' gradient comes out in fp32 (bart_ext/bf16_gemm.py; 2x PyTorch's bf16
        # products there, and no bf16 rounding of the logits or of each chunk's weight gradient).
        mkl = low and compute_dtype == torch.bfloat16 and dev.type == "cpu" and bf16_gemm.enabled()
        low_w = torch.empty(weight.shape, dtype=compute_dtype, device=dev) if low and need_w and not mkl else None
        for start in range(0, n, chunk):
            h = hidden[start : start + chunk].to(compute_dtype)  # (c, C)
            c = h.size(0)
            t = target[start : start + chunk].unsqueeze(1)  # (c, 1)
            z, lp, lp_rows = logits[:c], lprobs[:c], lprobs_rows[:c]
            if mkl:
                bf16_gemm.gemm(h, w.t(), lp)  # (c, V), fp32
            else:
                torch.mm(h, w.t(), out=z)  # (c, V)
            if dev.type == "cpu":
                # bf16/fp16 logits: cast into the fp32 buffer, then the log-softmax in place there.
                # ``log_softmax(z, dtype=fp32)`` allocates a fresh fp32 copy every chunk, whose page
                # faults made it 3x slower (11.8 against 3.9 ms for 450 x 18.6k on a 2-core Xeon).
                if not mkl and z.data_ptr() != lp.data_ptr():
                    lp.copy_(z)
                lp_rows[:, vocab:].fill_(float("-inf"))  # the previous chunk left 0 there
                torch.log_softmax(lp_rows, dim=-1, out=lp_rows)
            else:
                logits_rows[:c, vocab:].fill_(float("-inf"))
                torch.log_softmax(logits_rows[:c], dim=-1, dtype=acc, out=lp_rows)
                logits_rows[:c, vocab:].zero_()
            lp_rows[:, vocab:].zero_()  # for the matmuls below (the fp32 gradient is a view of this buffer)
            chunk_nll = -lp.gather(1, t).sum()
            if count_correct:  # a CPU's argmax is slow; elsewhere it is one kernel, without host syncs
                n_correct += (_count_correct(lp, t.squeeze(1)) if dev.type == "cpu"
                              else lp.argmax(-1).eq(t.squeeze(1)).sum())
            nll += chunk_nll
            if eps:
                loss += on_target * chunk_nll - eps_i * lp.sum()  # eps_i * sum_v -log p_v
            else:
                loss += chunk_nll
            if not (need_h or need_w):
                continue
            # d loss / d logits = (on_target + eps_i * V) * softmax - on_target * onehot - eps_i
            grad = lp.exp_()  # softmax, in place
            if scale != 1.0:
                grad.mul_(scale)
            grad.scatter_add_(1, t, grad.new_full((c, 1), -on_target))
            if eps_i:
                grad.sub_(eps_i)
            if low:
                grad = z.copy_(grad)
            if need_h:
                if mkl and grad_h.dtype == torch.float32:
                    bf16_gemm.gemm(grad, w, grad_h[start : start + chunk])  # (c, C)
                elif grad_h.dtype == grad.dtype:
                    torch.mm(grad, w, out=grad_h[start : start + chunk])  # (c, C)
                else:
                    grad_h[start : start + chunk] = grad @ w
            if need_w:
                if mkl:
                    bf16_gemm.gemm(grad.t(), h, grad_w, beta=0.0 if start == 0 else 1.0)  # (V, C), fp32
                elif low:
                    torch.mm(grad.t(), h, out=low_w)  # (V, C), accumulated in fp32:
                    if start == 0:
                        grad_w.copy_(low_w)
                    elif dev.type == "cpu":  # through the fp32 buffer, free again here
                        add_through(grad_w, low_w, lprobs_rows)
                    else:  # CUDA's add casts inside its kernel
                        grad_w.add_(low_w)
                elif start == 0:
                    torch.mm(grad.t(), h, out=grad_w)
                else:
                    grad_w.addmm_(grad.t(), h)
        if need_h and rows_kept is not None:
            grad_h = torch.zeros_like(hidden_all).index_copy_(0, rows_kept, grad_h)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(nll, n_correct)
        return loss, nll, n_correct

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_nll, _grad_correct):
        grad_h, grad_w = ctx.saved_tensors
        # Not in place: the saved gradients serve every backward through a retained graph. A
        # backward from the loss itself (fairseq's fp32 step) has grad_loss == 1: the saved
        # gradients are returned as they are, without a second (V x C) tensor at the step's
        # memory peak. Checked on the CPU only, where reading the scalar costs no device sync.
        unit = grad_loss.device.type == "cpu" and float(grad_loss) == 1.0
        if grad_h is not None and not unit:
            grad_h = grad_h * grad_loss.to(grad_h.dtype)
        if grad_w is not None:
            grad_w = (grad_w if unit else grad_w * grad_loss).to(ctx.weight_dtype)
        return grad_h, grad_w, None, None, None, None, None, None


def fused_linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, *, ignore_index: int,
                               label_smoothing: float = 0.0, chunk_tokens: int = 0,
                               count_correct: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Summed (label-smoothed) cross-entropy of ``hidden @ weight.T`` against ``target``, chunked.

    Args:
        hidden: ``(N, C)`` decoder features (any leading shape is flattened).
        weight: ``(V, C)`` output projection (the tied embedding).
        target: ``(N,)`` token ids; ``ignore_index`` ones add nothing.
        ignore_index: the padding index.
        label_smoothing: fairseq's epsilon.
        chunk_tokens: tokens per chunk; 0 picks ``auto_chunk_tokens(V)``.
        count_correct: count the tokens whose argmax is the target (a max over every row, and on a
            CPU an argmax only for rows whose maximum is tied); False returns 0 for that count.

    Returns:
        ``(loss, nll_loss, n_correct)``: the loss (differentiable), the summed NLL and the number of
        non-padding tokens whose argmax is the target (neither differentiable).
    """
    hidden = hidden.reshape(-1, hidden.size(-1))
    target = target.reshape(-1)
    if hidden.size(0) != target.size(0):
        raise ValueError(f"hidden has {hidden.size(0)} tokens but target has {target.size(0)}")
    if hidden.size(1) != weight.size(1):
        raise ValueError(f"hidden is {hidden.size(1)} wide but the output projection is {tuple(weight.shape)}")
    chunk = chunk_tokens or auto_chunk_tokens(weight.size(0))
    dtype = _compute_dtype(hidden.device.type, hidden.dtype)
    with torch.autocast(hidden.device.type, enabled=False):
        return _FusedLinearCrossEntropy.apply(hidden, weight, target, ignore_index, float(label_smoothing),
                                              chunk, dtype, count_correct)


def reference_linear_cross_entropy(hidden: Tensor, weight: Tensor, target: Tensor, *, ignore_index: int,
                                   label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
    """The unfused computation (full logits, fp32 log-softmax, fairseq's formula): for tests and benchmarks."""
    logits = hidden.reshape(-1, hidden.size(-1)) @ weight.t()
    lprobs = torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    target = target.reshape(-1, 1)
    pad = target.eq(ignore_index)
    nll = (-lprobs.gather(1, target)).masked_fill(pad, 0.0).sum()
    smooth = (-lprobs.sum(-1, keepdim=True)).masked_fill(pad, 0.0).sum()
    eps_i = label_smoothing / (lprobs.size(-1) - 1)
    return (1.0 - label_smoothing - eps_i) * nll + eps_i * smooth, nll
