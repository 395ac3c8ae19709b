"""A Python API for a trained model, as fairseq's BART hub interface offers it.

    import bart_ext
    model = bart_ext.load("runs/demo/finetune/checkpoint_best.pt")   # ours, or `convert.py from-hf`'s
    model.summarize(["A paper's text ..."], preset="xsum")
    model.sample(["A paper's text ..."], beam=4, lenpen=2.0, max_len_b=140, min_len=55)  # fairseq's hub spelling
    model.fill_mask(["Neural machine <mask> is a task."], topk=3)     # [(text, score), ...] per input
    model.encode("text"), model.decode(tokens)                         # <s> ... </s> ids and back
    model.predict("sentence_classification_head", ["We propose ..."])  # logits of a fine-tuned head

Text is GPT-2 BPE-encoded with the ``encoder.json`` / ``vocab.bpe`` of the model's data folder
(the checkpoint's ``task.data``, or ``data=``), or with its ``sentencepiece.model`` where it has no
GPT-2 files (``bart_ext.bpe.FolderCodec``), with the leading space that running text gives a
sentence's first word in our data preparation (for a ``from-hf`` checkpoint not trained since: as
its source tokenizer did, none for fairseq's and transformers' BART). Generation runs through the checkpoint's own task
and bart_ext's beam search, so outputs equal ``fairseq-generate``'s with the same settings.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor

from bart_ext.cli import progress_bar

MASK = "<mask>"
logger = logging.getLogger(__name__)


def _rows(texts: Sequence[str] | str, method: str) -> tuple[list[str], bool]:
    """``texts`` as a list, and whether one string was given (fairseq's hub answers a string with
    one result, a list with a list); an empty or blank text is refused naming its position."""
    single = isinstance(texts, str)
    rows = [texts] if single else list(texts)
    for i, text in enumerate(rows):
        if not isinstance(text, str):
            raise TypeError(f"{method}: text {i} is not a str but {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"{method}: text {i} is empty" + ("" if single else f" (of {len(rows)})"))
    return rows, single


class BartHub:
    """A loaded model with its task, dictionary and BPE (see the module docstring)."""

    def __init__(self, model, task, cfg, data: Path, leading_space: bool = True):
        from bart_ext.bpe import FolderCodec

        self.model, self.task, self.cfg, self.data = model.eval(), task, cfg, data
        self.leading_space = leading_space
        self.dictionary = task.source_dictionary
        try:
            self.codec = FolderCodec(data)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err} (pass data= the folder that holds them)") from None
        self.bpe = self.codec.bpe  # fairseq's GPT-2 encoder (None for a sentencepiece model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device) -> BartHub:
        self.model.to(device)
        return self

    def encode(self, text: str, *more: str) -> Tensor:
        """``<s>`` + the text's tokens + ``</s>``, and each further text's tokens + ``</s>`` (fairseq's BART hub
        ``encode(sentence, *addl_sentences)``); each ``<mask>`` in a text becomes the mask token."""
        d = self.dictionary
        ids = [d.bos()]
        for t in (text, *more):
            ids += self._tokens(t) + [d.eos()]
        return torch.tensor(ids, dtype=torch.long)

    def _tokens(self, text: str) -> list[int]:
        """The text's tokens, without ``<s>`` and ``</s>``."""
        d = self.dictionary
        if MASK in text and MASK not in d.indices:  # d.index would give <unk>
            raise ValueError(f"{MASK} in {text[:60]!r}, but this model's dictionary has no {MASK} (a model fine-tuned "
                             "with a task that does not add it, e.g. fairseq's translation)")
        ids = []
        for i, piece in enumerate(text.split(MASK)):
            if i:
                ids.append(d.index(MASK))
            # The first piece starts as a sentence does in running text (a space before its first
            # word, unless the model was imported and not trained here: text_has_leading_space); a
            # space before a <mask> belongs to the masked span; one after it stays.
            if i == 0:
                piece = (" " if self.leading_space else "") + piece.strip()
            piece = piece.rstrip()
            if piece.strip():
                ids += [d.index(t) for t in self.codec.symbols(piece)]
        return ids

    def decode(self, tokens: Tensor) -> str:
        """Text of ``tokens``, without ``<s>``, ``</s>`` and padding."""
        return self.codec.decode(self.dictionary, tokens)

    def _batch(self, rows: Sequence[Tensor]) -> dict:
        from fairseq.data import data_utils

        src = data_utils.collate_tokens(list(rows), self.dictionary.pad(), left_pad=False).to(self.device)
        return {"id": torch.arange(len(rows)), "net_input": {"src_tokens": src, "src_lengths": src.ne(
            self.dictionary.pad()).sum(1)}}

    def _positions(self) -> int:
        """The longest input, ``<s>`` and ``</s>`` included, that both the encoder and the decoder can place."""
        positions = self.model.max_positions()
        return int(min(positions)) if isinstance(positions, tuple) else int(positions)

    def _check_lengths(self, rows: Sequence[Tensor], method: str) -> None:
        """One ``ValueError`` naming the first input longer than the model's positions (the embedding
        lookup failed with ``IndexError: index out of range in self``)."""
        limit = self._positions()
        for i, row in enumerate(rows):
            if len(row) > limit:
                raise ValueError(f"{method}: text {i} is {len(row)} tokens with <s> and </s>, more than the "
                                 f"model's {limit} positions; shorten it (summarize and predict cut long texts)")

    @torch.no_grad()
    def generate(self, rows: Sequence[Tensor], batch_size: int = 32, progress: bool | None = None,
                 **settings) -> list[list[dict]]:
        """fairseq's hypotheses (``tokens``, ``score``, ...) for each row of encoded input, best first.

        Args:
            rows: encoded inputs (``encode``).
            batch_size: inputs decoded at once, longest first (as fairseq's hub batches): a test set in one
                call no longer goes through the model as one batch padded to its longest document.
            progress: a progress bar on standard error (texts done, rate, time left); by default shown for
                more than one batch when standard error is a terminal.
            settings: fairseq generation options (``beam``, ``lenpen``, ``max_len_b``, ``min_len``,
                ``no_repeat_ngram_size``, ``match_source_len``, ...); ``<s>`` is forced first.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")
        from fairseq.dataclass.configs import GenerationConfig

        gen = GenerationConfig()
        for key, value in settings.items():
            if not hasattr(gen, key):
                raise ValueError(f"unknown generation setting {key!r}")
            if key in ("beam", "nbest") and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"generation setting {key} must be a positive integer, not {value!r}")
            setattr(gen, key, value)
        self._check_lengths(rows, "generate")
        generator = self.task.build_generator([self.model], gen)
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i]))
        out: list[list[dict] | None] = [None] * len(rows)
        with progress_bar(len(rows), batch_size, progress, "generate") as bar:
            for start in range(0, len(order), batch_size):
                group = order[start: start + batch_size]
                sample = self._batch([rows[i] for i in group])
                prefix = sample["net_input"]["src_tokens"].new_full((len(group), 1), self.dictionary.bos())
                for i, hypos in zip(group, self.task.inference_step(generator, [self.model], sample,
                                                                     prefix_tokens=prefix)):
                    out[i] = hypos
                bar.update(len(group))
        return out

    def _best(self, texts: Sequence[str] | str, method: str, verbose: bool = False, **settings) -> list[str] | str:
        """The best hypothesis of each text, decoded; sources cut as fine-tuning cut them
        (``truncate_source``, ``max_source_positions``), else to the model's positions."""
        from bart_ext.summarization_data import source_length_limit

        texts, single = _rows(texts, method)
        if not texts:
            return []
        limit = source_length_limit(self.cfg.task, self._positions())
        rows = []
        for text in texts:
            ids = self.encode(text)
            if len(ids) > limit:
                ids = torch.cat([ids[: limit - 1], ids[-1:]])
            rows.append(ids)
        hypos = [h[0] for h in self.generate(rows, **settings)]
        out = [self.decode(h["tokens"]) for h in hypos]
        if verbose:  # as fairseq's hub logs them
            for text, hypo, decoded in zip(texts, hypos, out):
                logger.info("S\t%s", text)
                logger.info("H\t%s\t%s", float(hypo["score"]), decoded)
        return out[0] if single else out

    def summarize(self, texts: Sequence[str] | str, preset: str = "xsum", **settings) -> list[str] | str:
        """Summaries of ``texts`` with a decoding preset of configs/generate (``xsum``, ``cnn_dm``); the
        sources are cut as fine-tuning cut them (``truncate_source``, ``max_source_positions``). One
        string in, one summary out."""
        from bart_ext.summarization_data import load_preset

        return self._best(texts, "summarize", **{**load_preset(preset), **settings})

    def sample(self, texts: Sequence[str] | str, beam: int = 1, verbose: bool = False, **settings) -> list[str] | str:
        """fairseq's BART hub ``sample``: the best output of each text under fairseq's generation settings
        (``beam`` 1 unless given, ``lenpen``, ``max_len_b``, ``min_len``, ``no_repeat_ngram_size``, ...), so
        that code written for ``BARTModel.from_pretrained(...).sample`` runs unchanged; ``<s>`` is forced first
        and long texts are cut as in ``summarize``. One string in, one output out."""
        return self._best(texts, "sample", verbose=verbose, beam=beam, **settings)

    def translate(self, texts: Sequence[str] | str, beam: int = 5, verbose: bool = False,
                  **settings) -> list[str] | str:
        """fairseq's hub ``translate``: ``sample`` with 5 beams unless given."""
        return self._best(texts, "translate", verbose=verbose, beam=beam, **settings)

    def fill_mask(self, texts: Sequence[str] | str, topk: int = 3, match_source_len: bool = True,
                  **settings) -> list[list[tuple[str, float]]] | list[tuple[str, float]]:
        """The ``topk`` best completions of each text with ``<mask>`` spans, as (text, score), by beam
        search of ``topk`` beams (fairseq's BART ``fill_mask``).

        ``match_source_len`` (fairseq's default, True) makes every output as many tokens as the input,
        so each ``<mask>`` becomes one token when the rest is kept; False lets a span take any length,
        as BART's text infilling trained it to (one ``<mask>`` for a span of Poisson length). One
        string in, its list of completions out."""
        texts, single = _rows(texts, "fill_mask")
        if isinstance(topk, bool) or not isinstance(topk, int) or topk < 1:
            raise ValueError(f"fill_mask: topk must be a positive integer, not {topk!r}")
        for text in texts:
            if MASK not in text:
                raise ValueError(f"fill_mask: no {MASK} in {text!r}")
        if not texts:
            return []
        rows = [self.encode(t) for t in texts]
        self._check_lengths(rows, "fill_mask")
        hypos = self.generate(rows, beam=topk, match_source_len=match_source_len, **settings)
        filled = [[(self.decode(h["tokens"]), float(h["score"])) for h in hs[:topk]] for hs in hypos]
        return filled[0] if single else filled

    @torch.no_grad()
    def predict(self, head: str, texts: Sequence[str | tuple[str, ...]] | str | tuple[str, ...] | Tensor,
                batch_size: int = 64, progress: bool | None = None) -> Tensor:
        """Logits ``(len(texts), num_classes)`` of classification head ``head`` (a model fine-tuned
        with ``--task sentence_prediction``); ``(num_classes,)`` for one string or one pair. A pair of texts
        (``(premise, hypothesis)``: MNLI, RTE, ...) is fed as fine-tuning fed ``input0`` and ``input1``:
        the task's ``init_token``, each text and its ``</s>``, its ``separator_token`` between them. An
        input longer than the model's positions keeps its first tokens and its final ``</s>``, whose state
        the head reads, as ``scripts/classify.py`` cuts it.

        ``texts`` may also be tokens, as fairseq's hub takes them (``predict('mnli', bart.encode(a, b))``):
        one row (1-D) or right-padded rows, fed as they are. Unlike fairseq's hub, which returns
        log-probabilities unless ``return_logits=True``, this returns logits (the same ``argmax``).
        ``batch_size`` inputs go through the model at once; ``progress`` as in ``generate``."""
        from bart_ext.classify.predict import batches_by_eos

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, not {batch_size!r}")

        eos = self.dictionary.eos()
        if isinstance(texts, Tensor):
            single, rows = texts.dim() == 1, self._token_rows(texts)
        else:
            single, rows = isinstance(texts, (str, tuple)), self._text_rows(texts)
        logits: list[Tensor | None] = [None] * len(rows)
        with progress_bar(len(rows), batch_size, progress, "predict") as bar:
            for group in batches_by_eos(rows, eos, batch_size):  # single texts and pairs apart, then in order
                sample = self._batch([rows[i] for i in group])
                out = self.model(**sample["net_input"], features_only=True, classification_head_name=head)[0]
                for i, row in zip(group, out):
                    logits[i] = row
                bar.update(len(group))
        return logits[0] if single else torch.stack(logits)

    def _text_rows(self, texts) -> list[Tensor]:
        from bart_ext.classify.predict import classifier_input

        entries = [texts] if isinstance(texts, (str, tuple)) else list(texts)
        if not entries:
            raise ValueError("predict: no texts")
        parts = [[e] if isinstance(e, str) else list(e) if isinstance(e, (tuple, list)) else [e] for e in entries]
        for i, entry in enumerate(parts):
            if not entry:
                raise ValueError(f"predict: text {i} is an empty pair")
            for j, text in enumerate(entry):
                where = f"text {i}" if len(entry) == 1 else f"text {i}, part {j}"
                if not isinstance(text, str):
                    raise TypeError(f"predict: {where} is not a str but {type(text).__name__}")
                if not text.strip():
                    raise ValueError(f"predict: {where} is empty")
        eos, limit = self.dictionary.eos(), self._positions()
        return [classifier_input(self.task, [torch.tensor(self._tokens(t) + [eos], dtype=torch.long) for t in entry],
                                 limit) for entry in parts]

    def _token_rows(self, tokens: Tensor) -> list[Tensor]:
        """One row (1-D) or right-padded rows of tokens, without their padding."""
        rows = tokens[None] if tokens.dim() == 1 else tokens
        if rows.dim() != 2 or rows.dtype != torch.long or rows.numel() == 0:
            raise ValueError(f"predict: tokens must be a 1-D or 2-D LongTensor (encode's output), not a "
                             f"{rows.dtype} of shape {tuple(tokens.shape)}")
        out = [row[row.ne(self.dictionary.pad())].cpu() for row in rows]
        self._check_lengths(out, "predict")
        return out


def load(checkpoint: str | Path, data: str | Path | None = None, device: str | None = None,
         bf16: bool | None = None, prefix_space: bool | None = None) -> BartHub:
    """A checkpoint of a ``bart_*_preln`` model (any of our tasks, or ``convert.py from-hf``'s) as a
    ``BartHub``.

    Args:
        checkpoint: the ``.pt`` file.
        data: the folder with the model's dictionary and GPT-2 files (default: the checkpoint's
            ``task.data``).
        device: where to run it (default: where torch puts new tensors, the CPU).
        bf16: run the model's matmuls in bf16 (True) or fp32 (False). Default: as the checkpoint
            was trained (``--bf16-autocast``), except on a CPU where bf16 matmuls are slower than
            fp32's (no bf16 instructions, or AVX512-BF16 without AMX: measured at load), where a
            bf16-trained model runs in fp32 and a warning says so.
        prefix_space: whether texts get a space before their first word, as the model's training data had
            it. Default: yes for a model trained here (bart_ext's data preparation gives every text one), as
            its source tokenizer did for a ``from-hf`` checkpoint not trained since. False for a model
            fine-tuned on data binarized with fairseq's own tools (its GLUE script, ``multiprocessing_bpe_encoder``).

    Raises:
        FileNotFoundError: the checkpoint or the data folder's files are missing (names them).
    """
    from bart_ext.adapters import import_plugin
    from bart_ext.summarization_data import text_has_leading_space

    import_plugin()  # bart_ext's tasks and models, and fairseq's loader fixed for torch >= 2.6
    from fairseq import checkpoint_utils

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint {checkpoint} not found")
    if device is not None and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"bart_ext.load(device={device!r}): this machine has no CUDA device "
                         "(torch.cuda.is_available() is False); leave device out to run on the CPU")
    overrides = {"data": str(data)} if data is not None else {}
    state = checkpoint_utils.load_checkpoint_to_cpu(str(checkpoint), arg_overrides=overrides)
    trained_on = _task_data(state)
    if data is None and trained_on and not Path(trained_on.split(os.pathsep)[0]).is_dir():
        # the checkpoint moved to another machine, or its data folder was deleted
        raise FileNotFoundError(f"{checkpoint} was trained with task.data={trained_on}, which is not there: "
                                "pass bart_ext.load(..., data=FOLDER), the folder with its dictionary and "
                                "GPT-2 BPE files (encoder.json, vocab.bpe) or sentencepiece.model")
    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task([str(checkpoint)], arg_overrides=overrides,
                                                                     state=state)
    folder = Path(str(cfg.task.data).split(":")[0])
    hub = BartHub(models[0], task, cfg, folder, leading_space=text_has_leading_space(state, prefix_space))
    hub = hub.to(device) if device else hub
    _choose_precision(hub.model, bf16, checkpoint)
    return hub


def _task_data(state: dict) -> str | None:
    """The ``task.data`` a loaded checkpoint state names (a config or an argparse-era ``args``)."""
    cfg = state.get("cfg")
    task = cfg.get("task") if cfg is not None else None
    data = task.get("data") if task is not None else getattr(state.get("args"), "data", None)
    return str(data) if data else None


def _choose_precision(model, bf16: bool | None, checkpoint: Path) -> None:
    if not hasattr(model, "bf16_autocast"):
        if bf16:
            raise ValueError(f"bf16=True: the model of {checkpoint} ({type(model).__name__}) has no bf16 autocast switch")
        return
    if bf16 is None:
        bf16 = bool(model.bf16_autocast)
        if bf16 and next(model.parameters()).device.type == "cpu":
            from bart_ext import hardware

            slower = hardware.bf16_slower_than_fp32()
            if slower:
                logger.warning("%s was trained with --bf16-autocast, but %s; running it in fp32 (bf16=True keeps bf16)",
                               checkpoint, slower)
                bf16 = False
    model.bf16_autocast = bf16
