"""Classification heads on BART, as fairseq's ``BARTModel`` has them.

A sentence (or a pair) is fed to both the encoder and the decoder (decoder input: the tokens
shifted right behind ``</s>``); the head reads the decoder's state at the last ``</s>`` (Lewis et
al. 2019, section 3.1: "the final hidden state of the final decoder token"). State-dict names are
fairseq's (``classification_heads.NAME.dense``, ``.out_proj``), so heads of fairseq BART
checkpoints (``bart.large.mnli``) load by key.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu, "gelu": nn.functional.gelu, "linear": lambda x: x}


class ClassificationHead(nn.Module):
    """dropout -> dense -> activation -> dropout -> out_proj (fairseq's ``BARTClassificationHead``).

    Args:
        input_dim: model width.
        inner_dim: width of ``dense``.
        num_classes: outputs (1 for regression).
        activation: ``tanh`` (fairseq's and transformers' default), ``relu``, ``gelu`` or ``linear``.
        pooler_dropout: dropout before ``dense`` and before ``out_proj``.
    """

    def __init__(self, input_dim: int, inner_dim: int, num_classes: int, activation: str = "tanh",
                 pooler_dropout: float = 0.0):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"--pooler-activation-fn {activation!r}: expected one of {', '.join(ACTIVATIONS)}")
        self.dense = nn.Linear(input_dim, inner_dim)
        self.activation = activation
        self.dropout = nn.Dropout(p=pooler_dropout)
        self.out_proj = nn.Linear(inner_dim, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        x = self.dense(self.dropout(features))
        return self.out_proj(self.dropout(ACTIVATIONS[self.activation](x)))


def last_eos_states(features: Tensor, src_tokens: Tensor, eos: int) -> Tensor:
    """The decoder states ``(B, C)`` at each row's last ``</s>`` of ``src_tokens`` (B, T).

    Every row must hold the same number of ``</s>`` (fairseq's rule: one per segment).
    """
    eos_mask = src_tokens.eq(eos)
    counts = eos_mask.sum(1)
    if bool((counts != counts[0]).any()) or int(counts[0]) == 0:
        raise ValueError(f"every input must hold the same number of </s> (id {eos}) tokens, got "
                         f"{sorted(set(counts.tolist()))} per row")
    b, _, c = features.shape
    return features[eos_mask, :].view(b, -1, c)[:, -1, :]


def roll_right(src_tokens: Tensor, pad: int) -> Tensor:
    """Decoder input for classification: each right-padded row rolled by one (its last token, the
    final ``</s>``, moves to the front), padding kept where it is; what fairseq's
    ``--add-prev-output-tokens`` builds (``RollDataset(src_tokens, 1)``)."""
    lengths = src_tokens.ne(pad).sum(1)
    out = src_tokens.roll(1, dims=1)
    out[:, 0] = src_tokens.gather(1, (lengths - 1).clamp(min=0)[:, None]).squeeze(1)
    return out.masked_fill(torch.arange(out.size(1), device=out.device)[None, :] >= lengths[:, None], pad)
