"""fairseq adapters for BART denoising: the dataset wrapper and the task logic.

The noise and the sample layout live in ``bart_ext.noising`` and
``bart_ext.denoising_data``; this module only reads fairseq's binarized data,
builds the word-start table from the dictionary and hands fairseq its dataset.
A ``task.data`` folder of LDDL parquet shards (``train/``, ``valid/`` or the
folder itself) is detected and streamed through ``fairseq_lddl`` instead.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import torch
from fairseq.data import Dictionary, FairseqDataset, data_utils
from fairseq.data.indexed_dataset import MMapIndexedDataset
from fairseq.tasks import FairseqTask

from bart_ext import lddl_data
from bart_ext.adapters.beam_generator import BeamGeneratorTask
from bart_ext.adapters.eval_batches import batch_multiple
from bart_ext.adapters.fairseq_lddl import LDDLDataset, LDDLEpochBatchIterator, batch_size_for
from bart_ext.bpe import GPT2Encoder, SentencePieceEncoder, gpt2_dictionary_lines
from bart_ext.denoising_data import DenoisingSamples, collate
from bart_ext.noising import NoiseConfig, Specials

logger = logging.getLogger(__name__)


class BartDenoisingDataset(FairseqDataset):
    """A FairseqDataset around ``DenoisingSamples``."""

    def __init__(self, samples: DenoisingSamples, pad: int, eos: int, shuffle: bool):
        super().__init__()
        self.samples = samples
        self.pad, self.eos = pad, eos
        self.shuffle = shuffle
        self.sizes = samples.sizes

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict:
        out = self.samples.noised(index)
        return {"id": index, "source": torch.from_numpy(out.source), "target": torch.from_numpy(out.target)}

    def collater(self, samples: list[dict]) -> dict:
        return collate(samples, self.pad, self.eos)

    def num_tokens(self, index: int) -> int:
        return int(self.sizes[index])

    def size(self, index: int) -> int:
        return int(self.sizes[index])

    def ordered_indices(self) -> np.ndarray:
        # Shuffled by (seed, epoch), then stably sorted by length so batches pad little.
        if self.shuffle:
            order = np.random.default_rng([self.samples.seed, self.samples.epoch]).permutation(len(self))
        else:
            order = np.arange(len(self))
        return order[np.argsort(self.sizes[order], kind="mergesort")]

    @property
    def can_reuse_epoch_itr_across_epochs(self) -> bool:
        return False  # the noise depends on the epoch

    def set_epoch(self, epoch: int) -> None:
        self.samples.epoch = epoch

    @property
    def supports_prefetch(self) -> bool:
        return False


def word_start_table(dictionary: Dictionary, kind: str, encoder_json: Path | None) -> np.ndarray:
    """Which dictionary entries begin a word.

    Args:
        dictionary: the task's dictionary.
        kind: ``gpt2`` (fairseq's GPT-2 dict: symbols are BPE ids; a word starts with a
            leading-space byte, ``Ġ``), ``sentencepiece`` (pieces starting with ``▁``) or
            ``token`` (every token is a word).
        encoder_json: GPT-2's ``encoder.json`` (for ``gpt2``).
    """
    table = np.ones(len(dictionary), dtype=bool)  # specials and unknown symbols count as words
    if kind == "token":
        return table
    if kind == "sentencepiece":
        for i in range(dictionary.nspecial, len(dictionary)):
            table[i] = dictionary[i].startswith("\u2581") or dictionary[i].startswith("<")
        return table
    if kind != "gpt2":
        raise ValueError(f"word_starts must be gpt2, sentencepiece or token, got {kind!r}")
    if encoder_json is None or not encoder_json.exists():
        raise FileNotFoundError(
            f"word_starts=gpt2 needs GPT-2's encoder.json: not found at {encoder_json}; set "
            "--gpt2-encoder-json (scripts/prepare_data.py puts it in DATA/gpt2/encoder.json)"
        )
    id_to_token = {v: k for k, v in json.loads(encoder_json.read_text(encoding="utf-8")).items()}
    for i in range(dictionary.nspecial, len(dictionary)):
        sym = dictionary[i]
        if sym.isdigit():
            token = id_to_token.get(int(sym))
            if token is None:
                raise ValueError(
                    f"dictionary entry {i} ({sym!r}) is not a GPT-2 BPE id in {encoder_json}: "
                    "is the data GPT-2 BPE encoded, or should --word-starts be sentencepiece/token?"
                )
            table[i] = token.startswith("\u0120")  # "Ġ": GPT-2's byte-level space
    return table


def _reader(lines) -> callable:
    """``(lo, hi) -> tokens`` of consecutive lines; one contiguous read for mmap data."""
    if isinstance(lines, MMapIndexedDataset):
        index = lines._index
        sizes, pointers, dtype = index.sizes, index._pointers, index.dtype

        def read(lo: int, hi: int) -> np.ndarray:
            count = int(sizes[lo:hi].sum())
            return np.frombuffer(lines._bin_buffer, dtype=dtype, count=count, offset=int(pointers[lo]))

        return read
    return lambda lo, hi: torch.cat([lines[i] for i in range(lo, hi)]).numpy()


class BartDenoisingTaskBase(BeamGeneratorTask, FairseqTask):
    """Task logic for ``--task bart_denoising`` (registered in ``user_dir/bart_denoising.py``)."""

    def __init__(self, cfg, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.mask_idx = dictionary.add_symbol("<mask>")  # as fairseq's denoising task: last entry
        self.noise = NoiseConfig(
            mask=cfg.mask, mask_random=cfg.mask_random, poisson_lambda=cfg.poisson_lambda,
            replace_length=cfg.replace_length, permute_sentences=cfg.permute_sentences,
            rotate=cfg.rotate, insert=cfg.insert,
        )
        self._word_start = None
        self._lddl_text = None

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        data = cfg.data.split(os.pathsep)[0]
        dict_path = os.path.join(data, "dict.txt")
        if (cfg.word_starts == "gpt2" and not cfg.gpt2_encoder_json and not encoder_json_path(cfg).exists()
                and os.path.isfile(os.path.join(data, "sentencepiece.model"))):
            # lddl_preprocess.py --sentencepiece-model's output: BART's default word starts are GPT-2's
            raise FileNotFoundError(f"{data} is sentencepiece-encoded (sentencepiece.model, no GPT-2 encoder.json): "
                                    "pass --word-starts sentencepiece (task.word_starts=sentencepiece)")
        if not os.path.exists(dict_path):
            if not is_lddl(data):
                raise FileNotFoundError(
                    f"{dict_path} not found: task.data must be a fairseq-preprocess output folder or a folder of "
                    "LDDL parquet shards (scripts/lddl_preprocess.py)")
            if cfg.word_starts != "gpt2":
                raise FileNotFoundError(f"{dict_path} not found: LDDL data with {cfg.word_starts} needs a dict.txt")
            dictionary = Dictionary()  # every GPT-2 BPE id, in id order
            for line in gpt2_dictionary_lines(encoder_json_path(cfg)):
                dictionary.add_symbol(line.split()[0])
        else:
            dictionary = Dictionary.load(dict_path)
        logger.info("dictionary: %d types (+ <mask>)", len(dictionary))
        return cls(cfg, dictionary)

    @classmethod
    def from_data(cls, data, tokens_per_sample: int = 512, seed: int = 1, **noise):
        """The registered task on a fairseq-preprocess folder, outside fairseq's CLI (scripts, tests)."""
        from omegaconf import OmegaConf

        dataclass = getattr(cls, "__dataclass")  # set by fairseq's register_task
        cfg = OmegaConf.structured(dataclass(data=str(data), tokens_per_sample=tokens_per_sample, seed=seed,
                                             dataset_impl=None, **noise))
        return cls.setup_task(cfg)

    @property
    def source_dictionary(self) -> Dictionary:
        return self.dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary

    def max_positions(self):
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    def build_model(self, cfg, from_checkpoint=False):
        """fairseq's; a model built to train (not from a checkpoint) with fewer positions than a sample's
        ``tokens_per_sample`` is refused: fairseq skipped every longer sample with a warning (862 of the
        default data's at 1024 on a 512-position model) and stopped on the first longer validation one."""
        model = super().build_model(cfg, from_checkpoint)
        positions = model.max_positions()
        positions = min(positions) if isinstance(positions, tuple) else positions
        if not from_checkpoint and positions is not None and self.cfg.tokens_per_sample > positions:
            raise ValueError(f"--tokens-per-sample {self.cfg.tokens_per_sample} (task.tokens_per_sample) is more than "
                             f"the model's {positions} positions: set it to {positions} or fewer")
        return model

    def build_dataset_for_inference(self, src_tokens, src_lengths, constraints=None):
        """Texts given as tokens (``BARTModel.from_pretrained``'s ``fill_mask``/``sample``, fairseq-interactive):
        one sample each, ``<s>`` first as pretraining sources begin, right-padded as pretraining batches are.
        fairseq's task raised ``NotImplementedError`` here, so fairseq's hub could not fill masks with a
        pretrained bart_ext model."""
        from fairseq.data import LanguagePairDataset

        bos = self.dictionary.bos()
        rows = [t if len(t) and t[0] == bos else torch.cat([t.new_tensor([bos]), t]) for t in src_tokens]
        return LanguagePairDataset(rows, [len(t) for t in rows], self.dictionary, tgt_dict=self.dictionary,
                                   left_pad_source=False, constraints=constraints)

    def word_start(self) -> np.ndarray:
        if self._word_start is None:
            self._word_start = word_start_table(self.dictionary, self.cfg.word_starts, encoder_json_path(self.cfg))
        return self._word_start

    def specials(self) -> Specials:
        d = self.dictionary
        return Specials(bos=d.bos(), eos=d.eos(), mask=self.mask_idx, size=len(d), first_regular=d.nspecial)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        if is_lddl(self.cfg.data.split(os.pathsep)[0]):
            self.datasets[split] = self._load_lddl(split)
            return self.datasets[split]
        paths = self.cfg.data.split(os.pathsep)
        path = os.path.join(paths[(epoch - 1) % len(paths)], split)
        lines = data_utils.load_indexed_dataset(path, self.dictionary, self.cfg.dataset_impl, combine=combine)
        if lines is None:
            raise FileNotFoundError(f"no binarized data for split {split!r} at {path}.{{bin,idx}}")
        d = self.dictionary
        samples = DenoisingSamples(
            _reader(lines), lines.sizes, self.cfg.tokens_per_sample - 2, self.word_start(), self.specials(),
            self.noise, self.cfg.seed,
        )
        logger.info("%s: %d sentences -> %d samples of up to %d tokens", split, len(lines), len(samples),
                    self.cfg.tokens_per_sample)
        self.datasets[split] = BartDenoisingDataset(samples, d.pad(), d.eos(), shuffle=split == "train")
        return self.datasets[split]

    def _load_lddl(self, split: str) -> LDDLDataset:
        root = Path(self.cfg.data.split(os.pathsep)[0])
        folder = root / split if lddl_data.is_shard_folder(root / split) else root
        if folder == root and split != "train":
            raise FileNotFoundError(f"no LDDL shards for split {split!r}: {root / split} holds no *.parquet "
                                    "(write a validation split with scripts/lddl_preprocess.py --valid-corpus, "
                                    "or pass --disable-validation)")
        shards = lddl_data.open_shards(folder, skip_corrupt=self.cfg.lddl_skip_corrupt)
        if shards.skipped:
            logger.warning("%s: %d corrupt shards skipped: %s", folder, len(shards.skipped), shards.skipped)
        if self._lddl_text is None:  # the tokenizer and its id table, built once per task, not per epoch
            encoder = self._text_encoder()
            self._lddl_text = (encoder, encoder.id_table(self.dictionary))
        encoder, id_table = self._lddl_text
        cfg = lddl_data.LoaderConfig(
            shards=shards.shards, encoder=encoder, id_table=id_table,
            word_start=self.word_start(), specials=self.specials(), pad=self.dictionary.pad(), noise=self.noise,
            tokens_per_sample=self.cfg.tokens_per_sample, batch_size=0, bin_size=self.cfg.lddl_bin_size,
            seed=self.cfg.seed,
        )
        logger.info("%s: %d LDDL samples in %d shards from %s", split, shards.total, len(shards.shards), folder)
        return LDDLDataset(cfg, str(folder), shuffle=split == "train")

    def _text_encoder(self):
        if self.cfg.word_starts == "sentencepiece":
            model = self.cfg.lddl_sentencepiece_model or os.path.join(self.cfg.data, "sentencepiece.model")
            return SentencePieceEncoder(model)
        encoder_json = encoder_json_path(self.cfg)
        return GPT2Encoder(encoder_json, encoder_json.with_name("vocab.bpe"))

    def get_batch_iterator(self, dataset, max_tokens=None, max_sentences=None, max_positions=None,
                           ignore_invalid_inputs=False, required_batch_size_multiple=1, seed=1, num_shards=1,
                           shard_id=0, num_workers=0, epoch=1, **kwargs):
        if not isinstance(dataset, LDDLDataset):
            return super().get_batch_iterator(
                dataset, max_tokens=max_tokens, max_sentences=max_sentences, max_positions=max_positions,
                ignore_invalid_inputs=ignore_invalid_inputs,
                required_batch_size_multiple=batch_multiple(self, dataset, required_batch_size_multiple),
                seed=seed, num_shards=num_shards,
                shard_id=shard_id, num_workers=num_workers, epoch=epoch, **kwargs)
        cfg = dataclasses.replace(
            dataset.cfg, batch_size=batch_size_for(max_sentences, max_tokens, self.cfg.tokens_per_sample))
        return LDDLEpochBatchIterator(cfg, rank=shard_id, world=num_shards, epoch=epoch, shuffle=dataset.shuffle,
                                      workers=num_workers)

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        loss, sample_size, logging_output = super().train_step(sample, model, criterion, optimizer, update_num,
                                                               ignore_grad)
        if "padding" in sample:  # LDDL batches: padding share per logging interval
            logging_output["pad_tokens"], logging_output["slot_tokens"] = sample["padding"]  # host ints
        return loss, sample_size, logging_output

    def reduce_metrics(self, logging_outputs, criterion):
        super().reduce_metrics(logging_outputs, criterion)
        slots = sum(log.get("slot_tokens", 0) for log in logging_outputs)
        if slots:
            from fairseq import metrics

            metrics.log_scalar("pad_share", sum(log.get("pad_tokens", 0) for log in logging_outputs) / slots,
                               weight=slots, round=4)


def is_lddl(data: str) -> bool:
    """A folder of LDDL parquet shards: ``DATA/*.parquet`` or ``DATA/train/*.parquet``."""
    return lddl_data.is_shard_folder(data) or lddl_data.is_shard_folder(os.path.join(data, "train"))


def encoder_json_path(cfg) -> Path:
    return Path(cfg.gpt2_encoder_json or os.path.join(cfg.data.split(os.pathsep)[0], "encoder.json"))
