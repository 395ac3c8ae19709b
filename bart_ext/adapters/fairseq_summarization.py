"""``--task bart_summarization``: fairseq's translation task, shaped the way BART was pretrained.

Three differences from ``--task translation``, each switchable:

* sources begin with ``<s>`` (``--prepend-bos``), as the denoising sources did;
* targets begin with ``<s>`` (``--target-bos``), as the denoising targets did, so the
  decoder is fine-tuned to predict the first word after ``<s>``;
* generation forces ``<s>`` as the first token (``--force-bos``), as fairseq's BART hub
  interface does. Stock ``fairseq-generate`` lets the model pick the first token and then
  decodes from a state fine-tuning never saw.

Its generator is fairseq's, except that plain beam search runs ``BeamSequenceGenerator``
(``beam_generator``: the same outputs with fewer passes over the vocabulary per step).

The dictionary is the pretrained one plus ``<mask>`` (appended last, as ``bart_denoising``
does), so a pretrained checkpoint's embedding fits unchanged.
"""
from __future__ import annotations

import inspect
import logging
import os

import torch
from fairseq import utils
from fairseq.data import (
    AppendTokenDataset,
    Dictionary,
    LanguagePairDataset,
    PrependTokenDataset,
    StripTokenDataset,
    TruncateDataset,
    data_utils,
)
from fairseq.tasks.translation import TranslationTask

from bart_ext.adapters.beam_generator import BeamGeneratorTask
from bart_ext.adapters.eval_batches import batch_multiple
from bart_ext.adapters.fairseq_scoring import RougeValidation

logger = logging.getLogger(__name__)


class BartSummarizationTaskBase(BeamGeneratorTask, TranslationTask):
    @classmethod
    def load_dictionary(cls, filename):
        if not os.path.exists(filename):
            raise FileNotFoundError(
                f"{filename} not found: task.data must be a translation-format fairseq-preprocess folder "
                "(scripts/prepare_summarization.py writes one)")
        dictionary = Dictionary.load(filename)
        dictionary.add_symbol("<mask>")  # the pretrained embedding has it (bart_denoising appends it last)
        return dictionary

    def _side(self, data_path: str, split: str, lang: str, dictionary: Dictionary):
        src, tgt = self.cfg.source_lang, self.cfg.target_lang
        prefix = os.path.join(data_path, f"{split}.{src}-{tgt}.{lang}")
        dataset = data_utils.load_indexed_dataset(prefix, dictionary, self.cfg.dataset_impl)
        if dataset is None:
            raise FileNotFoundError(f"{prefix}.{{bin,idx}} not found (split {split!r} in {data_path})")
        return dataset

    def _shaping(self, task_cfg) -> tuple[bool, int, bool, bool]:
        """(truncate_source, max_source_positions, prepend_bos, target_bos): fairseq-generate passes the
        checkpoint's task config, so test sources are shaped exactly as the fine-tuning data was."""
        cfg = self.cfg
        if task_cfg is not None and getattr(task_cfg, "_name", None) == "bart_summarization":
            cfg = task_cfg
            logger.info("data shaped as in fine-tuning: truncate_source=%s max_source_positions=%s prepend_bos=%s "
                        "target_bos=%s", cfg.truncate_source, cfg.max_source_positions, cfg.prepend_bos,
                        cfg.target_bos)
        return bool(cfg.truncate_source), int(cfg.max_source_positions), bool(cfg.prepend_bos), bool(cfg.target_bos)

    def load_dataset(self, split, epoch=1, combine=False, task_cfg=None, **kwargs):
        truncate, max_source, prepend_bos, target_bos = self._shaping(task_cfg)
        paths = utils.split_paths(self.cfg.data)
        data_path = paths[(epoch - 1) % len(paths)] if split == self.cfg.train_subset else paths[0]
        src = self._side(data_path, split, self.cfg.source_lang, self.src_dict)
        tgt = self._side(data_path, split, self.cfg.target_lang, self.tgt_dict)
        if len(src) != len(tgt):
            raise ValueError(f"{data_path}: split {split} has {len(src)} sources but {len(tgt)} targets")
        bos, eos = self.src_dict.bos(), self.src_dict.eos()
        if truncate:
            keep = max_source - 1 - int(prepend_bos)
            src = AppendTokenDataset(TruncateDataset(StripTokenDataset(src, eos), keep), eos)
        if prepend_bos:
            src = PrependTokenDataset(src, bos)
        if target_bos:
            tgt = PrependTokenDataset(tgt, self.tgt_dict.bos())
        self.datasets[split] = LanguagePairDataset(
            src, src.sizes, self.src_dict, tgt, tgt.sizes, self.tgt_dict,
            left_pad_source=self.cfg.left_pad_source, left_pad_target=self.cfg.left_pad_target,
            shuffle=(split != "test"), num_buckets=self.cfg.num_batch_buckets,
            pad_to_multiple=self.cfg.required_seq_len_multiple,
        )
        logger.info("%s %s: %d pairs (<s> on sources: %s, on targets: %s)", data_path, split, len(src),
                    prepend_bos, target_bos)
        return self.datasets[split]

    def build_model(self, cfg, from_checkpoint=False):
        """fairseq's; remembers the fewest source positions of the models built, which ``truncate_source``
        cuts inference sources to when ``max_source_positions`` asks for more. A model built to train
        (``fairseq-train``, not from a checkpoint) with fewer positions than ``truncate_source`` cuts to is
        refused: fairseq would skip every longer training document with a warning and stop on the first
        longer validation one, after the first epoch."""
        model = super().build_model(cfg, from_checkpoint)
        if getattr(self.cfg, "eval_rouge", False) and not from_checkpoint:  # fairseq-train's: missing files stop it here
            self._rouge_validation(model)
        positions = model.max_positions()
        positions = positions[0] if isinstance(positions, tuple) else positions
        if positions is not None:
            self._model_source_positions = min(positions, getattr(self, "_model_source_positions", positions))
            limit = int(self.cfg.max_source_positions)
            if not from_checkpoint and self.cfg.truncate_source and positions < limit:
                raise ValueError(
                    f"--truncate-source cuts sources to --max-source-positions {limit} (task.max_source_positions), "
                    f"but the model has {positions} source positions: set it to {positions} or fewer")
        return model

    def _inference_source_limit(self) -> int:
        """``max_source_positions``, or the model's own source positions where they are fewer: the README's
        ``--max-source-positions 1024`` (bart.large's) on a model of 512 positions, such as the demo's, cut a
        long text to 1,024 tokens, and fairseq-interactive then refused it as an invalid size."""
        limit = int(self.cfg.max_source_positions)
        model_limit = getattr(self, "_model_source_positions", None)
        if model_limit is not None and model_limit < limit:
            if not getattr(self, "_warned_source_limit", False):
                logger.warning("--truncate-source: the model has %d source positions, fewer than "
                               "--max-source-positions %d; sources are cut to %d tokens", model_limit, limit,
                               model_limit)
                self._warned_source_limit = True
            limit = model_limit
        return limit

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """Sources given as tokens (fairseq-interactive, ``bart_ext.load``), shaped as ``load_dataset`` shapes
        the binarized ones: ``<s>`` first, and with ``truncate_source`` cut to ``max_source_positions`` (or the
        model's positions, where fewer) keeping the final ``</s>`` (fairseq-interactive refused a longer text
        as an invalid size)."""
        bos = self.src_dict.bos()
        limit = self._inference_source_limit() if self.cfg.truncate_source else None
        rows = []
        for t in src_tokens:
            if self.cfg.prepend_bos and not (len(t) and t[0] == bos):
                t = torch.cat([t.new_tensor([bos]), t])
            if limit is not None and len(t) > limit:
                t = torch.cat([t[: limit - 1], t[-1:]])
            rows.append(t)
        return super().build_dataset_for_inference(rows, [len(t) for t in rows], constraints)

    def get_batch_iterator(self, dataset, *args, **kwargs):
        """fairseq's, except that splits other than the training one are batched with a multiple of 1,
        so that ``fairseq-generate`` and validation see every sentence (``eval_batches``)."""
        call = inspect.signature(super().get_batch_iterator).bind(dataset, *args, **kwargs)
        call.arguments["required_batch_size_multiple"] = batch_multiple(
            self, dataset, call.arguments.get("required_batch_size_multiple", 1))
        return super().get_batch_iterator(*call.args, **call.kwargs)

    def valid_step(self, sample, model, criterion):
        """fairseq's, plus the summed ROUGE of the batch's summaries under ``--eval-rouge``."""
        loss, sample_size, logging_output = super().valid_step(sample, model, criterion)
        if getattr(self.cfg, "eval_rouge", False):
            logging_output.update(self._rouge_validation(model).logging_output(sample, model))
        return loss, sample_size, logging_output

    def _rouge_validation(self, model) -> RougeValidation:
        """The ``--eval-rouge`` scorer, built with fairseq-train's model, or on first use (fairseq-validate
        loads its model from the checkpoint)."""
        if getattr(self, "_rouge", None) is None:
            self._rouge = RougeValidation(self, model, utils.split_paths(self.cfg.data)[0], self.cfg.eval_rouge_args,
                                          self.cfg.eval_rouge_print_samples)
        return self._rouge

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        RougeValidation.reduce(logging_outputs)

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        if self.cfg.force_bos and prefix_tokens is None:
            src = sample["net_input"]["src_tokens"]
            prefix_tokens = src.new_full((src.size(0), 1), self.tgt_dict.bos())
        return super().inference_step(generator, models, sample, prefix_tokens=prefix_tokens,
                                      constraints=constraints)
