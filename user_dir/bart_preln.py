"""``--arch bart_{tiny,small,base,large}_preln``: Pre-LN BART (NVIDIA's recipe) for fairseq.

The model's code: ``bart_ext/adapters/fairseq_model.py`` (fairseq interfaces) around ``bart_ext/model.py``.
"""
import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.models import register_model, register_model_architecture

from bart_ext.adapters.fairseq_model import BartEncoderDecoder


# fairseq reads these annotations at run time: typing.Optional, no `from __future__`.
# Shape fields default to None: "take the architecture's preset". fairseq's
# hydra path fills a model's dataclass defaults before the architecture
# function runs, so non-None defaults here would override every preset.
@dataclass
class BartPrelnConfig(FairseqDataclass):
    encoder_layers: Optional[int] = field(default=None, metadata={"help": "encoder layers"})
    decoder_layers: Optional[int] = field(default=None, metadata={"help": "decoder layers"})
    encoder_embed_dim: Optional[int] = field(default=None, metadata={"help": "model width (encoder and decoder)"})
    encoder_ffn_embed_dim: Optional[int] = field(default=None, metadata={"help": "feed-forward inner width"})
    encoder_attention_heads: Optional[int] = field(default=None, metadata={"help": "attention heads"})
    max_positions: Optional[int] = field(default=None, metadata={"help": "learned positions (source and target)"})
    dropout: Optional[float] = field(default=None, metadata={"help": "dropout on embeddings and sublayer outputs"})
    attention_dropout: Optional[float] = field(default=None, metadata={"help": "dropout on attention weights"})
    activation_dropout: Optional[float] = field(default=None, metadata={"help": "dropout after GeLU"})
    init_std: Optional[float] = field(default=None, metadata={
        "help": "std of the normal initialisation of Linear and Embedding weights (BART: 0.02; "
                "bart_small_preln: width ** -0.5, with which narrow models start copying far sooner)"})
    post_ln: bool = field(
        default=False, metadata={"help": "Post-LN layout (fairseq's `bart`), for ablations; default Pre-LN"}
    )
    init_missing_final_layer_norm: bool = field(
        default=False,
        metadata={"help": "accept a Post-LN checkpoint in a Pre-LN model: initialise the final LayerNorms fresh"},
    )
    checkpoint_activations: bool = field(default=False, metadata={
        "help": "recompute each layer's activations in the backward instead of keeping them (less memory, "
                "one more forward)"})
    compile: bool = field(default=False, metadata={
        "help": "torch.compile the encoder and decoder layers (dynamic shapes; compile time logged once; "
                "falls back to eager with a warning where no compiler works)"})
    # Precision switches sit on the model: plugins cannot add fairseq common options, and
    # fairseq's own --bf16 means TPU on the command line.
    bf16_autocast: bool = field(default=False, metadata={
        "help": "forward passes under bf16 autocast (fp32 weights, optimizer state and loss; no loss scaling): "
                "GPUs from Ampere on, and CPUs"})
    pooler_dropout: Optional[float] = field(default=None, metadata={
        "help": "dropout in classification heads (--task sentence_prediction)"})
    pooler_activation_fn: str = field(default="tanh", metadata={
        "help": "activation of classification heads: tanh, relu, gelu or linear"})
    load_checkpoint_heads: bool = field(default=False, metadata={
        "help": "register the classification heads a loaded checkpoint holds (otherwise they are dropped)"})
    no_tf32: bool = field(default=False, metadata={
        "help": "keep PyTorch's TF32 setting; by default building the model turns TF32 matmuls on for the "
                "process, as NVIDIA's recipe trains (a process-wide PyTorch setting)"})


@register_model("bart_preln", dataclass=BartPrelnConfig)
class BartPreln(BartEncoderDecoder):
    @classmethod
    def build_model(cls, cfg, task):
        # `--arch bart_preln` (fairseq registers it as a no-op architecture):
        # the large preset fills whatever is still unset.
        bart_large_preln(cfg)
        return super().build_model(cfg, task)


def _preset(cfg, **values) -> None:
    # fairseq's argparse path (options.parse_args_and_arch) deletes model defaults so that the
    # architecture fills them: every field the user did not type is absent from the Namespace.
    for f in dataclasses.fields(BartPrelnConfig):
        if not f.name.startswith("_") and not hasattr(cfg, f.name):
            setattr(cfg, f.name, f.default)
    for key, value in values.items():
        if getattr(cfg, key, None) is None:
            setattr(cfg, key, value)


def _regularisation(cfg) -> None:
    # BART's pretraining settings (fairseq bart_large_architecture) and initialisation (init_bert_params).
    _preset(cfg, init_std=0.02, max_positions=1024, dropout=0.1, attention_dropout=0.0, activation_dropout=0.0, pooler_dropout=0.0)


@register_model_architecture("bart_preln", "bart_large_preln")
def bart_large_preln(cfg) -> None:
    _preset(cfg, encoder_layers=12, decoder_layers=12, encoder_embed_dim=1024, encoder_ffn_embed_dim=4096,
            encoder_attention_heads=16)
    _regularisation(cfg)


@register_model_architecture("bart_preln", "bart_base_preln")
def bart_base_preln(cfg) -> None:
    _preset(cfg, encoder_layers=6, decoder_layers=6, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
            encoder_attention_heads=12)
    _regularisation(cfg)


@register_model_architecture("bart_preln", "bart_tiny_preln")
def bart_tiny_preln(cfg) -> None:
    # For tests and the demo: odd, unequal widths so that a transposed shape fails loudly.
    _preset(cfg, encoder_layers=2, decoder_layers=2, encoder_embed_dim=36, encoder_ffn_embed_dim=76,
            encoder_attention_heads=3, max_positions=512)
    _regularisation(cfg)



@register_model_architecture("bart_preln", "bart_small_preln")
def bart_small_preln(cfg) -> None:
    # The demo's model: a BART sized so that a 2-core CPU pretrains it in minutes, initialised at
    # width ** -0.5 instead of BART's 0.02, which at this width leaves a model hundreds of updates
    # on a plateau before it starts to copy (scripts/diagnose_copy.py; README, "The demo").
    _preset(cfg, encoder_layers=3, decoder_layers=3, encoder_embed_dim=128, encoder_ffn_embed_dim=512,
            encoder_attention_heads=4, max_positions=512)
    _preset(cfg, init_std=cfg.encoder_embed_dim ** -0.5)
    _regularisation(cfg)
