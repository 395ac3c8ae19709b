"""fairseq adapters for the plain-PyTorch BART in ``bart_ext.model``.

Cooperative inheritance (``class Encoder(core.Encoder, FairseqEncoder)``) gives the
core modules fairseq's interfaces (encoder-out dicts, incremental decoding,
beam reordering, checkpoint upgrade) without renaming a single parameter, so
state dicts stay fairseq BART's.
"""
from __future__ import annotations

import ast
import functools
import logging
import time
from typing import Any

import torch
from fairseq.models import FairseqEncoder, FairseqEncoderDecoderModel, FairseqIncrementalDecoder
from torch import Tensor, nn

from bart_ext import model as core
from bart_ext import switches
from bart_ext.adapters.fairseq_patches import check_one_job
from bart_ext.classify.heads import ClassificationHead, last_eos_states, roll_right
from bart_ext.classify.predict import check_num_classes
from bart_ext.convert.fairseq_layouts import upgrade_released_bart

logger = logging.getLogger(__name__)

IncrementalState = dict[str, dict[str, Tensor | None]]

# Keys a Pre-LN model has and a Post-LN (fairseq `bart`) checkpoint lacks.
FINAL_LAYER_NORM_KEYS = (
    "encoder.layer_norm.weight",
    "encoder.layer_norm.bias",
    "decoder.layer_norm.weight",
    "decoder.layer_norm.bias",
)


# The one field of the beam-shared protocol: an encoder_out under beam search (``set_beam_size(k)``,
# generation only) carries ``[tensor([k, expanded])]``, a CPU tensor. Its rows are sentences;
# ``expanded`` is 0 until the generator's first reorder has spread each sentence over its ``k``
# hypotheses (and 1 after): from then on the decoder reads one encoder row per ``k`` of its rows.
# ``k`` is fixed at that first reorder by its size (rows per sentence), not by ``set_beam_size``:
# fairseq's SequenceGenerator calls ``set_beam_size`` only for beams above 1, so a model that had
# run a beam of 5 kept 5 while a later greedy search expanded each sentence once.
BEAM = "bart_ext_beam"


class BartEncoder(core.Encoder, FairseqEncoder):
    def __init__(self, cfg: core.BartConfig, embed_tokens: nn.Embedding, dictionary):
        super().__init__(cfg, embed_tokens, dictionary=dictionary)
        self.max_source_positions = cfg.max_positions
        self.beam_size = 1  # set by BartEncoderDecoder.set_beam_size
        self.bf16_autocast = False  # set by BartEncoderDecoder.bf16_autocast

    def forward(self, src_tokens: Tensor, src_lengths: Tensor | None = None, return_all_hiddens: bool = False,
                **kwargs) -> dict[str, list[Tensor]]:
        """fairseq's encoder output; ``return_all_hiddens``: ``encoder_states`` holds the embedding's output and
        each layer's, (S, B, C), before the final LayerNorm, as fairseq's transformer encoder gives them."""
        states = [] if return_all_hiddens else None
        with torch.autocast(src_tokens.device.type, dtype=torch.bfloat16, enabled=self.bf16_autocast):
            x, pad = self.encode(src_tokens, states)
        out = {
            "encoder_out": [x.transpose(0, 1)],  # (S, B, C): fairseq's layout
            "encoder_padding_mask": [pad],  # (B, S)
            "encoder_embedding": [],
            "encoder_states": [s.transpose(0, 1) for s in states or ()],
            "src_tokens": [],
            "src_lengths": [] if src_lengths is None else [src_lengths],
        }
        if self.beam_size > 1 and not self.training:
            out[BEAM] = [torch.tensor([self.beam_size, 0])]
        return out

    def reorder_encoder_out(self, encoder_out: dict[str, list[Tensor]], new_order: Tensor):
        """Rows of ``encoder_out`` in ``new_order``.

        Under beam search the states are kept once per sentence instead of once per hypothesis
        (``BEAM``): the generator's first call spreads each sentence over its ``k`` hypotheses
        (``new_order`` holds sentence numbers, ``k`` each), later ones reorder hypotheses within
        sentences and drop finished sentences (row ``i`` of ``new_order`` comes from sentence
        ``new_order[i] // k``). Either way each group of ``k`` rows is one sentence, so one row per
        group is kept: the states are neither copied ``k`` times nor moved at every step.
        """
        out = dict(encoder_out)
        index = new_order
        if BEAM in encoder_out:
            k, expanded = encoder_out[BEAM][0].tolist()
            if not expanded:  # the expansion: each of the B sentences repeated k times, k the search's beam
                rows = encoder_out["encoder_out"][0].size(1)
                k = new_order.numel() // rows if rows and new_order.numel() % rows == 0 else 1
            if k == 1:  # a search of one hypothesis per sentence (greedy, sampling of one): rows as they come
                del out[BEAM]
            else:
                if new_order.numel() % k != 0:
                    raise ValueError(f"a beam-shared encoder_out cannot be reordered by {new_order.numel()} rows "
                                     f"with beam size {k}")
                index = new_order.view(-1, k)[:, 0] // (k if expanded else 1)
                out[BEAM] = [torch.tensor([k, 1])]
        out["encoder_out"] = [t.index_select(1, index) for t in encoder_out["encoder_out"]]
        for key in ("encoder_padding_mask", "src_lengths"):
            out[key] = [t.index_select(0, index) for t in encoder_out[key]]
        return out

    def max_positions(self) -> int:
        return self.max_source_positions


class BartDecoder(core.Decoder, FairseqIncrementalDecoder):
    def __init__(self, cfg: core.BartConfig, embed_tokens: nn.Embedding, dictionary):
        super().__init__(cfg, embed_tokens, dictionary=dictionary)
        self.max_target_positions = cfg.max_positions
        self.beam_size = 1  # set by BartEncoderDecoder.set_beam_size
        self.bf16_autocast = False  # set by BartEncoderDecoder.bf16_autocast

    def _caches(self, incremental_state: IncrementalState) -> list[core.LayerCache]:
        caches = []
        for i in range(len(self.layers)):
            cache = self.get_incremental_state(incremental_state, f"layer{i}")
            if cache is None:
                cache = {}
                self.set_incremental_state(incremental_state, f"layer{i}", cache)
            caches.append(cache)
        return caches

    def extract_features(
        self,
        prev_output_tokens: Tensor,
        encoder_out: dict[str, list[Tensor]] | None = None,
        incremental_state: IncrementalState | None = None,
        return_all_hiddens: bool = False,
        **kwargs,
    ) -> tuple[Tensor, dict[str, Any]]:
        """Features (B, T, C) and fairseq's ``extra``; ``return_all_hiddens``: ``inner_states`` holds the
        embedding's output and each layer's, (T, B, C), before the final LayerNorm, as fairseq's
        transformer decoder gives them (``BARTHubInterface.extract_features(..., return_all_hiddens=True)``;
        it was None, which that call stopped on)."""
        if encoder_out is None:
            raise ValueError("bart_preln's decoder needs encoder_out (it has no decoder-only mode)")
        enc = encoder_out["encoder_out"][0].transpose(0, 1)  # (B, S, C)
        enc_pad = encoder_out["encoder_padding_mask"][0]
        beam = 1
        if BEAM in encoder_out:
            k, expanded = encoder_out[BEAM][0].tolist()
            beam = k if expanded else 1
        cache = None
        tokens = prev_output_tokens
        if incremental_state is not None:
            cache = self._caches(incremental_state)
            done = cache[0]["self_k"].size(2) if "self_k" in cache[0] else 0
            tokens = prev_output_tokens[:, done:]  # only the steps not yet cached
        states = [] if return_all_hiddens else None
        x = self.decode(tokens, enc, enc_pad, cache, beam, states)
        # Attention weights are not materialised (scaled_dot_product_attention);
        # fairseq's generator accepts None and leaves alignments empty.
        return x, {"attn": [None], "inner_states": None if states is None else [s.transpose(0, 1) for s in states]}

    def forward(
        self,
        prev_output_tokens: Tensor,
        encoder_out: dict[str, list[Tensor]] | None = None,
        incremental_state: IncrementalState | None = None,
        features_only: bool = False,
        **kwargs,
    ) -> tuple[Tensor, dict[str, Any]]:
        with torch.autocast(prev_output_tokens.device.type, dtype=torch.bfloat16, enabled=self.bf16_autocast):
            x, extra = self.extract_features(prev_output_tokens, encoder_out, incremental_state,
                                             return_all_hiddens=bool(kwargs.get("return_all_hiddens")))
            return (x if features_only else self.output_layer(x)), extra

    def output_layer(self, features: Tensor) -> Tensor:
        return self.output_projection(features)

    def reorder_incremental_state(self, incremental_state: IncrementalState, new_order: Tensor) -> None:
        """Hypotheses' caches in ``new_order``; beam-shared cross-attention keys (``shared_*``,
        one row per sentence) follow their sentences, as in ``BartEncoder.reorder_encoder_out``."""
        rows = None
        for i in range(len(self.layers)):
            cache = self.get_incremental_state(incremental_state, f"layer{i}")
            if cache:
                if rows is None and "shared_k" in cache:  # k: hypotheses per sentence, as the encoder fixed it
                    k = cache["self_k"].size(0) // cache["shared_k"].size(0) if "self_k" in cache else self.beam_size
                    rows = new_order.view(-1, k)[:, 0] // k
                for key, value in cache.items():
                    if key.startswith("shared_"):
                        cache[key] = value.index_select(0, rows)
                    else:
                        cache[key] = value.index_select(0, new_order)

    def max_positions(self) -> int:
        return self.max_target_positions


def enable_tf32() -> None:
    """TF32 matmuls and convolutions on GPUs that have them (Ampere and later), as NVIDIA's recipe trains.

    TF32 is one process-wide PyTorch setting (it cannot be scoped to one model's backward), so this
    is deliberate and logged; ``--no-tf32`` leaves PyTorch's own setting untouched. A no-op without CUDA.
    """
    if torch.cuda.is_available() and not torch.backends.cuda.matmul.allow_tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        logger.info("bart_preln: TF32 matmuls on for this process (NVIDIA's recipe); --no-tf32 keeps PyTorch's setting")


class BartEncoderDecoder(FairseqEncoderDecoderModel):
    """fairseq model around ``bart_ext.model``; one embedding shared by encoder, decoder and output."""

    def __init__(self, cfg, encoder: BartEncoder, decoder: BartDecoder):
        super().__init__(encoder, decoder)
        self.cfg = cfg
        self.bf16_autocast = bool(cfg.bf16_autocast)
        self.compiled_layers = core.compile_layers(self) if cfg.compile else []
        self._compile_pending = bool(self.compiled_layers)
        self.classification_heads = nn.ModuleDict()

    @property
    def bf16_autocast(self) -> bool:
        """``--bf16-autocast``: the encoder's and the decoder's forward run under bf16 autocast, in
        training and in generation (fairseq-generate calls them, not ``forward``): matmuls in bf16,
        weights, gradients, optimizer state and the loss (fairseq's log-softmax upcasts) in fp32, no
        loss scaling."""
        return self.encoder.bf16_autocast

    @bf16_autocast.setter
    def bf16_autocast(self, on: bool) -> None:
        self.encoder.bf16_autocast = self.decoder.bf16_autocast = bool(on)

    def forward(self, src_tokens, src_lengths=None, prev_output_tokens=None, features_only=False,
                classification_head_name=None, **kwargs):
        """fairseq's encoder-decoder forward; with ``classification_head_name``, that head's output
        ``(B, num_classes)`` on the decoder state at each row's last ``</s>`` (fairseq BART's rule;
        without ``prev_output_tokens`` the decoder reads ``src_tokens`` rolled right, as
        ``--add-prev-output-tokens`` feeds it)."""
        args = (src_tokens, src_lengths, prev_output_tokens, features_only, classification_head_name)
        if self._compile_pending:
            return self._first_compiled_forward(*args, **kwargs)
        return self._forward(*args, **kwargs)

    def _forward(self, src_tokens, src_lengths, prev_output_tokens, features_only, classification_head_name,
                 **kwargs):
        if classification_head_name is None:
            if prev_output_tokens is None:
                raise ValueError("bart_preln's forward needs prev_output_tokens (or a classification_head_name)")
            return super().forward(src_tokens, src_lengths, prev_output_tokens, features_only=features_only, **kwargs)
        if classification_head_name not in self.classification_heads:
            raise KeyError(f"no classification head {classification_head_name!r} in this model (it has: "
                           f"{', '.join(self.classification_heads) or 'none'})")
        pad, eos = self.encoder.dictionary.pad(), self.encoder.dictionary.eos()
        if prev_output_tokens is None:
            prev_output_tokens = roll_right(src_tokens, pad)
        encoder_out = self.encoder(src_tokens, src_lengths=src_lengths)
        x, extra = self.decoder(prev_output_tokens, encoder_out=encoder_out, features_only=True)
        sentence = last_eos_states(x, src_tokens, eos)
        return self.classification_heads[classification_head_name](sentence.float()), extra

    def register_classification_head(self, name: str, num_classes: int | None = None, inner_dim: int | None = None,
                                     **kwargs) -> None:
        """Add (or replace) head ``name``; fairseq's ``sentence_prediction`` task calls this."""
        if name in self.classification_heads:
            old = self.classification_heads[name]
            if old.out_proj.out_features != num_classes or old.dense.out_features != (inner_dim or old.dense.in_features):
                logger.warning("re-registering head %r with num_classes %s (was %d), inner_dim %s (was %d)", name,
                               num_classes, old.out_proj.out_features, inner_dim, old.dense.out_features)
        width = self.cfg.encoder_embed_dim
        self.classification_heads[name] = ClassificationHead(
            width, inner_dim or width, num_classes, getattr(self.cfg, "pooler_activation_fn", None) or "tanh",
            getattr(self.cfg, "pooler_dropout", None) or 0.0)  # checkpoints from before heads lack both

    def _first_compiled_forward(self, *args, **kwargs):
        """``--compile``: the first forward compiles; say how long it took, or fall back to eager."""
        self._compile_pending = False
        t0 = time.perf_counter()
        try:
            out = self._forward(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 (only torch.compile's own failures are caught)
            if not type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
                raise
            logger.warning("--compile: torch.compile failed (%s: %s); the model runs eagerly",
                           type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            core.uncompile_layers(self.compiled_layers)
            self.compiled_layers = []
            return self._forward(*args, **kwargs)
        logger.info("--compile: %d encoder and decoder layers compiled in %.1fs (first forward; the backward "
                    "compiles at the first backward)", len(self.compiled_layers), time.perf_counter() - t0)
        return out

    @staticmethod
    def core_config(cfg, dictionary) -> core.BartConfig:
        return core.BartConfig(
            vocab_size=len(dictionary),
            padding_idx=dictionary.pad(),
            embed_dim=cfg.encoder_embed_dim,
            ffn_dim=cfg.encoder_ffn_embed_dim,
            encoder_layers=cfg.encoder_layers,
            decoder_layers=cfg.decoder_layers,
            attention_heads=cfg.encoder_attention_heads,
            max_positions=cfg.max_positions,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            activation_dropout=cfg.activation_dropout,
            normalize_before=not cfg.post_ln,
            checkpoint_activations=cfg.checkpoint_activations,
            init_std=getattr(cfg, "init_std", None) or 0.02,  # checkpoints from before the option lack it
        )

    @classmethod
    def build_model(cls, cfg, task):
        check_one_job()
        check_num_classes(task)
        src, tgt = task.source_dictionary, task.target_dictionary
        if tgt is not None and src is not tgt and src.symbols != tgt.symbols:
            raise ValueError(
                "bart_preln shares one embedding between encoder and decoder, so the source and "
                f"target dictionaries must be identical (got {len(src)} and {len(tgt)} entries); "
                "preprocess with --joined-dictionary or --srcdict/--tgtdict pointing at the same dict.txt"
            )
        if not cfg.no_tf32:
            enable_tf32()
        model_cfg = cls.core_config(cfg, src)
        embed = nn.Embedding(model_cfg.vocab_size, model_cfg.embed_dim, padding_idx=model_cfg.padding_idx)
        model = cls(cfg, BartEncoder(model_cfg, embed, src), BartDecoder(model_cfg, embed, src))
        model.apply(functools.partial(core.init_bert_params, std=model_cfg.init_std))
        return model

    def max_positions(self):
        return (self.encoder.max_positions(), self.decoder.max_positions())

    def make_generation_fast_(self, **kwargs) -> None:
        """fairseq's, which hands ``--retain-dropout`` to every module that has dropout (``core._Dropping``;
        before, our models ignored the flag and decoded without dropout). ``--retain-dropout-modules``
        must name some of their classes; a name that fits none would keep no dropout and is refused."""
        names = kwargs.get("retain_dropout_modules")
        if kwargs.get("retain_dropout") and names is not None:
            if isinstance(names, str):  # the command line gives a string: '["BartDecoder"]' or a,b
                text = names.strip()
                names = ast.literal_eval(text) if text.startswith(("[", "(")) else text.split(",")
            names = [str(n).strip() for n in names]
            ours = sorted({type(m).__name__ for m in self.modules() if isinstance(m, core._Dropping)})
            unknown = [n for n in names if n not in ours]
            if unknown:
                raise ValueError(f"--retain-dropout-modules {', '.join(unknown)}: the modules with dropout in "
                                 f"{type(self).__name__} are {', '.join(ours)}")
            kwargs["retain_dropout_modules"] = names
        super().make_generation_fast_(**kwargs)

    def set_beam_size(self, beam: int) -> None:
        """Called by fairseq's SequenceGenerator: keep encoder states and cross-attention keys once
        per sentence, not once per hypothesis (see ``BartEncoder.reorder_encoder_out``).
        ``BART_EXT_BEAM_SHARED=0`` turns this off (the benchmark's baseline)."""
        if switches.BEAM_SHARED.get() == "0":
            beam = 1
        self.encoder.beam_size = beam
        self.decoder.beam_size = beam

    def upgrade_state_dict_named(self, state_dict: dict[str, Tensor], name: str) -> None:
        # fairseq's own BART files (released bart.base/large/cnn/xsum): key names and embedding rows
        dictionary = getattr(self.encoder, "dictionary", None)
        symbols = list(dictionary.symbols) if dictionary is not None else None
        upgrade_released_bart(state_dict, name + "." if name else "", symbols)
        self._upgrade_heads(state_dict, name + "." if name else "")
        super().upgrade_state_dict_named(state_dict, name)

    def _upgrade_heads(self, state_dict: dict[str, Tensor], prefix: str) -> None:
        """Classification heads on load, as fairseq's BART treats them: a checkpoint's head that this
        model lacks is registered with ``--load-checkpoint-heads`` and dropped (with a warning)
        otherwise, or when its shape differs from this model's head of that name; a head this
        model has and the checkpoint lacks keeps its fresh weights."""
        root = prefix + "classification_heads."
        in_file = {k[len(root):].split(".")[0] for k in state_dict if k.startswith(root)}
        for head in sorted(in_file):
            try:
                num_classes = state_dict[f"{root}{head}.out_proj.weight"].size(0)
                inner_dim = state_dict[f"{root}{head}.dense.weight"].size(0)
            except KeyError as e:
                raise ValueError(f"classification head {head!r} in the checkpoint lacks {e.args[0]}") from None
            mine = self.classification_heads[head] if head in self.classification_heads else None
            if mine is None and getattr(self.cfg, "load_checkpoint_heads", False):
                self.register_classification_head(head, num_classes, inner_dim)
            elif mine is None or (mine.out_proj.out_features, mine.dense.out_features) != (num_classes, inner_dim):
                why = "not in this model" if mine is None else (
                    f"{num_classes} classes x {inner_dim} inner in the checkpoint, "
                    f"{mine.out_proj.out_features} x {mine.dense.out_features} here")
                logger.warning("classification head %r of the checkpoint dropped (%s)", head, why)
                for k in [k for k in state_dict if k.startswith(f"{root}{head}.")]:
                    del state_dict[k]
        for k, v in self.classification_heads.state_dict().items():
            state_dict.setdefault(root + k, v)

    def load_state_dict(self, state_dict, strict=True, model_cfg=None, args=None):
        self.upgrade_state_dict(state_dict)
        have_final = [k for k in FINAL_LAYER_NORM_KEYS if k in state_dict]
        if not self.cfg.post_ln and len(have_final) < len(FINAL_LAYER_NORM_KEYS):
            missing = [k for k in FINAL_LAYER_NORM_KEYS if k not in state_dict]
            if not getattr(self.cfg, "init_missing_final_layer_norm", False):
                raise ValueError(
                    "this checkpoint has a Post-LN layout (no final encoder/decoder LayerNorm: missing "
                    f"{', '.join(missing)}), but the model is Pre-LN. Its weights were trained with "
                    "LayerNorms after each residual add, so a Pre-LN model starts from a different "
                    "function. Either train a Post-LN model (--post-ln), or pass "
                    "--init-missing-final-layer-norm to accept it and initialise those LayerNorms fresh."
                )
            for key in missing:
                state_dict[key] = torch.ones(self.cfg.encoder_embed_dim) if key.endswith("weight") else (
                    torch.zeros(self.cfg.encoder_embed_dim)
                )
            logger.warning(
                "Post-LN checkpoint loaded into a Pre-LN model (--init-missing-final-layer-norm): "
                "initialised fresh (weight 1, bias 0): %s",
                ", ".join(missing),
            )
        elif self.cfg.post_ln and have_final:
            raise ValueError(
                f"this checkpoint has a Pre-LN layout ({', '.join(have_final)}), but the model is "
                "Post-LN (--post-ln); drop --post-ln to load it"
            )
        return nn.Module.load_state_dict(self, state_dict, strict)
