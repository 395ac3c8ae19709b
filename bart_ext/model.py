"""Pre-LN BART in plain PyTorch (no fairseq import).

The parameter names are fairseq BART's (``self_attn``, ``self_attn_layer_norm``,
``encoder_attn``, ``fc1``, ``final_layer_norm``, ``layernorm_embedding``,
``embed_positions`` with offset 2, ``output_projection``), so fairseq ``bart``
checkpoints convert by copying keys.

Layer-norm placement follows NVIDIA's BART recipe (DeepLearningExamples
``PyTorch/LanguageModeling/BART``, ``pre_ln=True``): a LayerNorm at the input of
every self-attention, cross-attention and feed-forward sublayer, inside the
residual branch, and a final LayerNorm on the encoder's and the decoder's
output. ``normalize_before=False`` gives the original Post-LN BART (Lewis et
al. 2019), numerically identical to fairseq's ``bart``.

Internally everything is batch-first ``(B, T, C)``; the fairseq adapter
transposes to fairseq's ``(T, B, C)`` at its boundary.

The modules take ``**kwargs`` in ``__init__`` and pass them up, so an adapter
can combine them with fairseq's base classes by cooperative inheritance
(``class Adapter(Encoder, FairseqEncoder)``) without renaming any parameter.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
import torch.nn.functional as F
from torch import Tensor, nn

from bart_ext import bf16_gemm
from bart_ext import dropout as dropout_kernel
from bart_ext.attention import attention
from bart_ext.bf16_gemm import Linear
from bart_ext.dropout import dropout as _dropout
from bart_ext.switches import ATTENTION

# Decoder cache for one layer: "self_k"/"self_v" grow by one step per call,
# "cross_k"/"cross_v" are computed once from the encoder output. (B, H, T, D).
LayerCache = dict[str, Tensor]


@dataclass
class BartConfig:
    """Shape and regularisation of a BART model.

    Args:
        vocab_size: number of dictionary entries (embedding rows).
        padding_idx: index of ``<pad>``; learned positions start at ``padding_idx + 1``.
        embed_dim: model width.
        ffn_dim: inner width of the feed-forward sublayers.
        encoder_layers: number of encoder layers.
        decoder_layers: number of decoder layers.
        attention_heads: heads per attention sublayer; must divide ``embed_dim``.
        max_positions: longest sequence the learned positions cover.
        dropout: dropout on embeddings and sublayer outputs.
        attention_dropout: dropout on attention probabilities.
        activation_dropout: dropout after the GeLU in the feed-forward sublayers.
        normalize_before: True for Pre-LN (NVIDIA's recipe), False for Post-LN (fairseq ``bart``).
        checkpoint_activations: in training, keep only each layer's input and recompute the layer
            in the backward (per-layer activation checkpointing, as fairseq's transformer offers
            it): less activation memory for one more forward.
        init_std: standard deviation of the normal initialisation of every Linear and Embedding
            weight. BERT/BART's 0.02 is sized for 768-1024 wide models; at 128 wide it leaves the
            attention value/output paths so small that a model takes hundreds of updates to start
            copying (``scripts/diagnose_copy.py``), and ``embed_dim ** -0.5`` removes that plateau.
    """

    vocab_size: int
    padding_idx: int = 1
    embed_dim: int = 768
    ffn_dim: int = 3072
    encoder_layers: int = 6
    decoder_layers: int = 6
    attention_heads: int = 12
    max_positions: int = 1024
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    normalize_before: bool = True
    checkpoint_activations: bool = False
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.embed_dim % self.attention_heads != 0:
            raise ValueError(
                f"embed_dim ({self.embed_dim}) must be divisible by attention_heads ({self.attention_heads})"
            )
        if not self.init_std > 0:
            raise ValueError(f"init_std must be positive (got {self.init_std})")
        if self.vocab_size <= self.padding_idx:
            raise ValueError(f"vocab_size ({self.vocab_size}) must exceed padding_idx ({self.padding_idx})")


def init_bert_params(module: nn.Module, std: float = 0.02) -> None:
    """BERT/BART initialisation: N(0, std) weights (0.02 in BERT and BART), zero biases, zero padding row."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=std)
        if module.padding_idx is not None:
            with torch.no_grad():
                module.weight[module.padding_idx].zero_()


class LearnedPositionalEmbedding(nn.Embedding):
    """Learned positions offset by ``padding_idx + 1`` (fairseq's convention).

    Padding tokens get position ``padding_idx``; the first real token gets
    ``padding_idx + 1``, so left- and right-padded batches embed alike.
    """

    def __init__(self, max_positions: int, embed_dim: int, padding_idx: int):
        super().__init__(max_positions + padding_idx + 1, embed_dim, padding_idx=padding_idx)
        self.max_positions = max_positions

    def forward(self, tokens: Tensor, start: int | None = None) -> Tensor:  # type: ignore[override]
        if start is not None:
            # Incremental decoding: consecutive positions from `start`, no padding inside.
            pos = torch.arange(start, start + tokens.size(1), device=tokens.device) + self.padding_idx + 1
            positions = pos.unsqueeze(0).expand(tokens.size(0), -1)
        else:
            mask = tokens.ne(self.padding_idx).int()
            positions = (torch.cumsum(mask, dim=1) * mask).long() + self.padding_idx
        return F.embedding(positions, self.weight, self.padding_idx)


@dataclass(frozen=True)
class Packing:
    """Where the real (non-pad) positions of a padded ``(B, T)`` batch lie: the layout of packed
    (variable-length) attention, which needs no mask and so keeps FlashAttention on GPUs.

    Args:
        index: ``(N,)`` flat positions ``b * T + t`` of the N real tokens, row by row.
        offsets: ``(B + 1,)`` where each row's tokens start in the packed ``(N, ...)`` tensor.
        min_len: shortest row (a host integer, so that SDPA need not read it back per layer).
        max_len: longest row.
        length: T, the padded length.
    """

    index: Tensor
    offsets: Tensor
    min_len: int
    max_len: int
    length: int

    @classmethod
    def of(cls, pad: Tensor) -> Packing:
        """The packing of a batch whose padding mask (True at padding) is ``pad`` (B, T)."""
        keep = ~pad
        lengths = keep.sum(1)
        offsets = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
        lo, hi = torch.stack([lengths.min(), lengths.max()]).tolist()  # one host sync per batch
        return cls(keep.reshape(-1).nonzero().squeeze(1), offsets, lo, hi, pad.size(1))

    def pack(self, x: Tensor) -> Tensor:
        """``(B, H, T, D)`` -> a jagged nested tensor ``(B, H, j, D)`` of the real positions."""
        b, h, t, d = x.shape
        values = x.transpose(1, 2).reshape(b * t, h, d).index_select(0, self.index)  # (N, H, D)
        nested = torch.nested.nested_tensor_from_jagged(
            values, self.offsets, min_seqlen=self.min_len, max_seqlen=self.max_len
        )  # (B, j, H, D)
        return nested.transpose(1, 2)

    def unpack(self, nested: Tensor, batch: int) -> Tensor:
        """The inverse of ``pack``: ``(B, H, T, D)`` with zeros at the padded positions."""
        values = nested.transpose(1, 2).values()  # (N, H, D)
        n, h, d = values.shape
        out = values.new_zeros(batch * self.length, h, d).index_copy(0, self.index, values)
        return out.view(batch, self.length, h, d).transpose(1, 2)


@dataclass(frozen=True)
class PackedMask:
    """The mask argument of packed attention: queries at ``query``'s positions attend to keys at
    ``key``'s. Outputs at padded query positions are zero (the masked path gives them values that
    nothing downstream reads: padded encoder states are masked as keys, padded decoder positions
    are ignored by the loss)."""

    query: Packing
    key: Packing


def use_packed_attention(device: torch.device) -> bool:
    """Packed (variable-length) attention for padded batches: on CUDA, where a boolean mask sends
    SDPA to its math or memory-efficient kernels and packing keeps FlashAttention; elsewhere the
    masked path (the CPU's flash kernel takes masks). ``BART_EXT_ATTENTION`` overrides the choice."""
    choice = ATTENTION.get()
    return choice == "packed" or (choice == "auto" and device.type == "cuda")


class _Dropping(nn.Module):
    """A module with dropout: on in training, and at inference too once fairseq's
    ``make_generation_fast_(retain_dropout=True)`` has reached it (``fairseq-generate --retain-dropout``,
    as fairseq's ``FairseqDropout`` keeps it; ``--retain-dropout-modules`` names classes, here
    ``MultiheadAttention``, ``EncoderLayer``, ``DecoderLayer``, ``BartEncoder``, ``BartDecoder``)."""

    retain_dropout = False

    @property
    def dropping(self) -> bool:
        return self.training or self.retain_dropout

    def make_generation_fast_(self, name: str = "", retain_dropout: bool = False,
                              retain_dropout_modules: Sequence[str] | None = None, **kwargs) -> None:
        if retain_dropout and (retain_dropout_modules is None or type(self).__name__ in retain_dropout_modules):
            self.retain_dropout = True


class MultiheadAttention(_Dropping):
    """Multi-head attention on ``(B, T, C)`` tensors through ``scaled_dot_product_attention``."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.k_proj = Linear(embed_dim, embed_dim)
        self.v_proj = Linear(embed_dim, embed_dim)
        self.q_proj = Linear(embed_dim, embed_dim)
        self.out_proj = Linear(embed_dim, embed_dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        return x.view(b, t, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(
        self,
        query: Tensor,
        kv: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        cache: LayerCache | None = None,
        cache_prefix: str = "self",
        beam: int = 1,
    ) -> Tensor:
        """Attend from ``query`` (B, T, C) to ``kv`` (B, S, C).

        Args:
            query: queries, ``(B, T, C)``; with ``beam > 1``, ``(B * beam, T, C)``.
            kv: keys and values, ``(B, S, C)``.
            mask: boolean, broadcastable to ``(B, H, T, S)``, True where attention is allowed; or a
                ``PackedMask`` (training and scoring only, ``beam == 1``, no cache).
            causal: lower-triangular masking (used when ``mask`` is None).
            cache: this layer's decoder cache, updated in place; None outside incremental decoding.
            cache_prefix: ``"self"`` (keys grow by the new steps), or a name for keys computed
                once from ``kv`` (``"cross"``; ``"shared"`` for the beam-shared ones).
            beam: hypotheses per row of ``kv``. Consecutive groups of ``beam`` queries attend to the
                same keys, which are projected and cached once per sentence rather than once per
                hypothesis (fairseq's "beamable" encoder attention); the result is the same.
        """
        if cache is None and beam == 1 and kv is query:  # training and scoring self-attention
            q, k, v = (self._heads(t) for t in bf16_gemm.linears(query, (self.q_proj, self.k_proj, self.v_proj)))
            return self._attend(q, k, v, mask, causal, beam)
        q = self._heads(self.q_proj(query))
        if beam > 1:
            bb, h, t, d = q.shape  # (B * beam, H, T, D) -> (B, H, beam * T, D)
            q = q.view(bb // beam, beam, h, t, d).transpose(1, 2).reshape(bb // beam, h, beam * t, d)
        k_key, v_key = cache_prefix + "_k", cache_prefix + "_v"
        if cache is not None and cache_prefix != "self" and k_key in cache:
            k, v = cache[k_key], cache[v_key]
        else:
            k, v = (self._heads(t) for t in bf16_gemm.linears(kv, (self.k_proj, self.v_proj)))
            if cache is not None:
                if k_key in cache:
                    k = torch.cat([cache[k_key], k], dim=2)
                    v = torch.cat([cache[v_key], v], dim=2)
                cache[k_key], cache[v_key] = k, v
        return self._attend(q, k, v, mask, causal, beam)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask, causal: bool, beam: int) -> Tensor:
        """Attention of the projected heads and the output projection: ``(B, T, C)``."""
        dropout = self.dropout if self.dropping else 0.0
        if isinstance(mask, PackedMask):
            packed = F.scaled_dot_product_attention(
                mask.query.pack(q), mask.key.pack(k), mask.key.pack(v), dropout_p=dropout
            )  # (B, H, j, D)
            out = mask.query.unpack(packed, q.size(0))
        else:
            out = attention(
                q, k, v, mask, causal and mask is None, dropout
            )  # (B, H, T, D); with beam > 1, (B, H, beam * T, D)
        if beam > 1:
            b, h, bt, d = out.shape
            out = out.view(b, h, beam, bt // beam, d).transpose(1, 2).reshape(b * beam, h, bt // beam, d)
        b, _, t, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, C)


class _GeluLinear(torch.autograd.Function):
    """``F.linear(gelu(h), weight, bias)`` that keeps ``h`` for the backward and recomputes
    ``gelu(h)`` there (one elementwise pass) instead of keeping it: a feed-forward sublayer then
    holds one ``(tokens x ffn)`` tensor for the backward instead of two. Outputs and gradients are
    the plain composition's, bit for bit (tests/unit/test_model.py), under bf16/fp16 autocast too,
    whose casts are applied here as autocast would (the matmul in the autocast dtype), and with
    ``bf16_gemm``'s fp32 weight and bias gradients where ``Linear`` takes them."""

    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, mkl: bool) -> Tensor:
        dev = h.device.type
        dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype
        w = weight.to(dtype)
        with torch.autocast(dev, enabled=False):
            out = F.linear(F.gelu(h.to(dtype)), w, None if bias is None else bias.to(dtype))
        ctx.save_for_backward(h, w)
        ctx.weight_dtype, ctx.has_bias = weight.dtype, bias is not None
        ctx.mkl = mkl  # bf16_gemm.uses_mkl (read outside: grad mode is off in here)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        h, w = ctx.saved_tensors
        hc, grad = h.to(w.dtype), grad.to(w.dtype)
        a = F.gelu(hc)  # recomputed
        g2, a2 = grad.reshape(-1, grad.size(-1)), a.reshape(-1, a.size(-1))
        if ctx.mkl:
            grad_w = bf16_gemm.weight_grad(g2, a2)  # a custom operator: _GeluLinear is traced when compiled
            grad_b = bf16_gemm.column_sums(g2) if ctx.has_bias else None
        else:
            grad_w = (g2.t() @ a2).to(ctx.weight_dtype)
            grad_b = g2.sum(0).to(ctx.weight_dtype) if ctx.has_bias else None
        grad_h = torch.ops.aten.gelu_backward(grad @ w, hc).to(h.dtype)
        return grad_h, grad_w, grad_b, None


class _Layer(_Dropping):
    """What encoder and decoder layers share: the residual rule and the feed-forward sublayer."""

    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.normalize_before = cfg.normalize_before
        self.dropout = cfg.dropout
        self.activation_dropout = cfg.activation_dropout

    def residual(self, x: Tensor, norm: nn.LayerNorm, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.normalize_before:
            # Pre-LN: x + f(LN(x)). The residual stream itself is never normalised.
            return x + _dropout(sublayer(norm(x)), self.dropout, self.dropping)
        # Post-LN: LN(x + f(x)), the original BART and fairseq's `bart`.
        return norm(x + _dropout(sublayer(x), self.dropout, self.dropping))

    def ffn(self, x: Tensor) -> Tensor:
        h = self.fc1(x)
        if torch.is_grad_enabled() and not (self.dropping and self.activation_dropout):
            mkl = bf16_gemm.uses_mkl(h, self.fc2.weight)  # fp32 weight and bias gradients from bf16 products
            return _GeluLinear.apply(h, self.fc2.weight, self.fc2.bias, mkl)  # gelu(h) not kept for the backward
        return self.fc2(_dropout(F.gelu(h), self.activation_dropout, self.dropping))


class EncoderLayer(_Layer):
    def __init__(self, cfg: BartConfig):
        super().__init__(cfg)
        self.self_attn = MultiheadAttention(cfg.embed_dim, cfg.attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.fc1 = Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.residual(x, self.self_attn_layer_norm, lambda h: self.self_attn(h, h, mask))
        return self.residual(x, self.final_layer_norm, self.ffn)


class DecoderLayer(_Layer):
    def __init__(self, cfg: BartConfig):
        super().__init__(cfg)
        self.self_attn = MultiheadAttention(cfg.embed_dim, cfg.attention_heads, cfg.attention_dropout)
        self.self_attn_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.encoder_attn = MultiheadAttention(cfg.embed_dim, cfg.attention_heads, cfg.attention_dropout)
        self.encoder_attn_layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.fc1 = Linear(cfg.embed_dim, cfg.ffn_dim)
        self.fc2 = Linear(cfg.ffn_dim, cfg.embed_dim)
        self.final_layer_norm = nn.LayerNorm(cfg.embed_dim)

    def forward(
        self,
        x: Tensor,
        enc: Tensor,
        enc_mask: Tensor | None,
        self_mask: Tensor | None,
        causal: bool,
        cache: LayerCache | None,
        beam: int = 1,
    ) -> Tensor:
        x = self.residual(
            x, self.self_attn_layer_norm, lambda h: self.self_attn(h, h, self_mask, causal, cache, "self")
        )
        cross = "shared" if beam > 1 else "cross"
        x = self.residual(
            x,
            self.encoder_attn_layer_norm,
            lambda h: self.encoder_attn(h, enc, enc_mask, False, cache, cross, beam),
        )
        return self.residual(x, self.final_layer_norm, self.ffn)


def run_layer(layer: nn.Module, checkpointed: bool, *args) -> Tensor:
    """``layer(*args)``, recomputed in the backward when ``checkpointed`` and gradients are on.

    torch's non-reentrant checkpoint restores the RNG state, so dropout masks are the same in the
    recomputation and gradients equal those without checkpointing.
    """
    if checkpointed and layer.training and torch.is_grad_enabled():
        # No determinism check: it reads the shapes of saved tensors, which nested (packed) ones lack.
        return torch.utils.checkpoint.checkpoint(layer, *args, use_reentrant=False, determinism_check="none")
    return layer(*args)


class _Stack(_Dropping):
    """What the encoder and the decoder share: token + learned position embeddings, their
    LayerNorm, ``layers``, and (Pre-LN) a final LayerNorm. ``kwargs`` go on up the MRO (the fairseq
    adapters mix in ``FairseqEncoder`` / ``FairseqIncrementalDecoder``)."""

    def __init__(self, cfg: BartConfig, embed_tokens: nn.Embedding, layers, **kwargs):
        super().__init__(**kwargs)
        self.padding_idx = cfg.padding_idx
        self.dropout = cfg.dropout
        self.embed_tokens = embed_tokens
        self.embed_positions = LearnedPositionalEmbedding(cfg.max_positions, cfg.embed_dim, cfg.padding_idx)
        self.layernorm_embedding = nn.LayerNorm(cfg.embed_dim)
        self.layers = nn.ModuleList(layers)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim) if cfg.normalize_before else None
        self.checkpoint_activations = cfg.checkpoint_activations


class Encoder(_Stack):
    """BART encoder: token + learned position embeddings, LayerNorm, N layers, (Pre-LN) final LayerNorm."""

    def __init__(self, cfg: BartConfig, embed_tokens: nn.Embedding, **kwargs):
        super().__init__(cfg, embed_tokens, (EncoderLayer(cfg) for _ in range(cfg.encoder_layers)), **kwargs)

    def encode(self, src_tokens: Tensor, states: list[Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Encode ``src_tokens`` (B, S); returns the states (B, S, C) and the padding mask (B, S).
        ``states``, where given, gets the embedding's output and each layer's (B, S, C), before the final
        LayerNorm, as fairseq's ``return_all_hiddens`` collects them."""
        pad = src_tokens.eq(self.padding_idx)
        # BART uses no embedding scale (fairseq bart: no_scale_embedding=True).
        x = self.embed_tokens(src_tokens) + self.embed_positions(src_tokens)
        x = _dropout(self.layernorm_embedding(x), self.dropout, self.dropping)
        mask: Tensor | PackedMask | None = None
        if pad.any():
            x = x * (~pad).unsqueeze(-1).type_as(x)
            if use_packed_attention(x.device):
                packing = Packing.of(pad)
                mask = PackedMask(packing, packing)
            else:
                mask = (~pad)[:, None, None, :]  # (B, 1, 1, S)
        if states is not None:
            states.append(x)
        for layer in self.layers:
            x = run_layer(layer, self.checkpoint_activations, x, mask)
            if states is not None:
                states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x, pad


class Decoder(_Stack):
    """BART decoder with tied input/output embeddings and an optional incremental cache."""

    def __init__(self, cfg: BartConfig, embed_tokens: nn.Embedding, **kwargs):
        super().__init__(cfg, embed_tokens, (DecoderLayer(cfg) for _ in range(cfg.decoder_layers)), **kwargs)
        self.output_projection = Linear(cfg.embed_dim, cfg.vocab_size, bias=False)
        self.output_projection.weight = embed_tokens.weight

    def decode(
        self,
        tokens: Tensor,
        enc: Tensor,
        enc_pad: Tensor,
        cache: list[LayerCache] | None = None,
        beam: int = 1,
        states: list[Tensor] | None = None,
    ) -> Tensor:
        """Decoder features (B, T, C) for ``tokens`` (B, T) given encoder states.

        Args:
            tokens: decoder input; with a cache, only the new steps (usually one).
            enc: encoder states, ``(B, S, C)``; with ``beam > 1``, ``(B / beam, S, C)``, one row
                per group of ``beam`` consecutive rows of ``tokens`` (beam search's hypotheses).
            enc_pad: encoder padding mask, ``(B, S)``, True at padding (rows as ``enc``).
            cache: one dict per layer, filled and extended in place; its length
                so far sets the positions of ``tokens``. Cross-attention keys are cached
                as ``cross_*``, or with ``beam > 1`` once per sentence as ``shared_*``.
            beam: hypotheses per encoder row.
            states: where given, gets the embedding's output and each layer's (B, T, C), before the
                final LayerNorm (fairseq's ``inner_states``).
        """
        if tokens.size(0) != enc.size(0) * beam:
            raise ValueError(
                f"decoder rows ({tokens.size(0)}) must be encoder rows ({enc.size(0)}) x beam ({beam})"
            )
        start = None
        if cache is not None:
            start = cache[0]["self_k"].size(2) if "self_k" in cache[0] else 0
        x = self.embed_tokens(tokens) + self.embed_positions(tokens, start)
        x = _dropout(self.layernorm_embedding(x), self.dropout, self.dropping)

        enc_mask: Tensor | PackedMask | None = None
        self_mask, causal = None, cache is None
        pad = tokens.eq(self.padding_idx)
        packed = cache is None and use_packed_attention(tokens.device)
        if enc_pad.any():
            if packed:
                # Every decoder position queries (padded ones are ignored by the loss).
                enc_mask = PackedMask(Packing.of(torch.zeros_like(pad)), Packing.of(enc_pad))
            else:
                enc_mask = (~enc_pad)[:, None, None, :]  # (B, 1, 1, S)
        if cache is None and pad.any() and not (packed and _right_padded(pad)):
            # With right padding, causal masking alone gives the real positions the same outputs
            # (no real position sees a later pad), which lets the packed path keep FlashAttention.
            t = tokens.size(1)
            tril = torch.ones(t, t, dtype=torch.bool, device=tokens.device).tril()
            self_mask = tril[None, None] & (~pad)[:, None, None, :]  # (B, 1, T, T)
        if states is not None:
            states.append(x)
        for i, layer in enumerate(self.layers):
            if cache is None:  # training and scoring; incremental decoding keeps no activations
                x = run_layer(layer, self.checkpoint_activations, x, enc, enc_mask, self_mask, causal, None, beam)
            else:  # incremental decoding stays eager under --compile (a graph per step and cache size)
                x = layer.forward(x, enc, enc_mask, self_mask, causal, cache[i], beam)
            if states is not None:
                states.append(x)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        return x


def _right_padded(pad: Tensor) -> bool:
    """True when every row's padding (True in ``pad``, (B, T)) is a suffix."""
    return bool((pad[:, :-1] <= pad[:, 1:]).all())


class BartModel(nn.Module):
    """A BART encoder-decoder in plain PyTorch (for use and tests without fairseq)."""

    def __init__(self, cfg: BartConfig):
        super().__init__()
        self.cfg = cfg
        embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.padding_idx)
        self.encoder = Encoder(cfg, embed)
        self.decoder = Decoder(cfg, embed)
        self.apply(functools.partial(init_bert_params, std=cfg.init_std))

    def forward(self, src_tokens: Tensor, prev_output_tokens: Tensor) -> Tensor:
        enc, pad = self.encoder.encode(src_tokens)
        x = self.decoder.decode(prev_output_tokens, enc, pad)
        return self.decoder.output_projection(x)  # (B, T, V)


def compile_layers(model: nn.Module) -> list[nn.Module]:
    """``torch.compile`` every encoder and decoder layer in place (parameter names unchanged).

    Layers, not the whole model: the embedding, masks and fairseq's incremental-state plumbing stay
    eager, and the layers of one stack share a graph. ``dynamic=True`` traces lengths and batch
    sizes as symbols, so new batch shapes do not recompile (masked or unmasked batches are two
    graph variants). Returns the compiled layers (``uncompile_layers`` reverts them).
    """
    dropout_kernel.prepare_compile()
    bf16_gemm.prepare_compile()
    layers = [m for m in model.modules() if isinstance(m, _Layer)]
    for layer in layers:
        layer.compile(dynamic=True)
    return layers


def uncompile_layers(layers: list[nn.Module]) -> None:
    """Back to eager execution after ``compile_layers``."""
    for layer in layers:
        layer._compiled_call_impl = None


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
