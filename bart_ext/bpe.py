"""Text -> dictionary indices for data read as text (LDDL shards): GPT-2 BPE or sentencepiece.

GPT-2 BPE comes from the offline ``encoder.json`` / ``vocab.bpe`` files
(``scripts/prepare_data.py`` fetches them). When ``tiktoken`` is installed it
does the encoding (Rust, built from those two local files, nothing downloaded);
otherwise fairseq's own GPT-2 encoder does it. Both give the same ids (tested).
fairseq's GPT-2 dictionaries hold the BPE ids as decimal strings, so an id maps
to a dictionary index by one table lookup.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# GPT-2's pre-tokenizer (Radford et al. 2019; the pattern of encoder.py in openai/gpt-2).
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


_BUILT: dict = {}  # encoders built in this process


class GPT2Encoder:
    """GPT-2 byte-level BPE from local files.

    Args:
        encoder_json: GPT-2's ``encoder.json``.
        vocab_bpe: GPT-2's ``vocab.bpe``.
        backend: ``tiktoken``, ``fairseq``, or None for tiktoken when importable.
    """

    def __init__(self, encoder_json: Path | str, vocab_bpe: Path | str, backend: str | None = None):
        for f in (encoder_json, vocab_bpe):
            if not Path(f).is_file():
                raise FileNotFoundError(f"GPT-2 BPE file not found: {f} (scripts/prepare_data.py writes "
                                        "encoder.json and vocab.bpe into data/aclsum/gpt2/)")
        self.encoder_json, self.vocab_bpe = str(encoder_json), str(vocab_bpe)
        if backend is None:
            try:
                import tiktoken  # noqa: F401

                backend = "tiktoken"
            except ImportError:
                backend = "fairseq"
        self.backend = backend
        self._enc = None

    def _encoder(self):
        if self._enc is None:  # built lazily, once per process: cheap to pickle into workers
            key = (self.backend, self.encoder_json, self.vocab_bpe)
            if key not in _BUILT:
                _BUILT[key] = self._build()
            self._enc = _BUILT[key]
        return self._enc

    def _build(self):
        if self.backend == "tiktoken":
            import tiktoken
            from tiktoken.load import data_gym_to_mergeable_bpe_ranks

            ranks = data_gym_to_mergeable_bpe_ranks(self.vocab_bpe, self.encoder_json)
            return tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
        if self.backend == "fairseq":
            from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

            return get_encoder(self.encoder_json, self.vocab_bpe)
        raise ValueError(f"GPT-2 backend must be tiktoken or fairseq, got {self.backend!r}")

    def __getstate__(self):
        return {**self.__dict__, "_enc": None}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        enc = self._encoder()
        if self.backend == "tiktoken":  # one call per text: encode_ordinary_batch starts a thread pool per call
            return [enc.encode_ordinary(t) for t in texts]
        return [enc.encode(t) for t in texts]

    def vocab_size(self) -> int:
        return len(json.loads(Path(self.encoder_json).read_text(encoding="utf-8")))

    def id_table(self, dictionary) -> np.ndarray:
        """BPE id -> dictionary index (``<unk>`` where the dictionary lacks the id)."""
        table = np.full(self.vocab_size(), dictionary.unk(), dtype=np.int64)
        for i in range(dictionary.nspecial, len(dictionary)):
            sym = dictionary[i]
            if sym.isdigit() and int(sym) < len(table):
                table[int(sym)] = i
        return table


class SentencePieceEncoder:
    """sentencepiece pieces, looked up in the dictionary by their strings.

    Args:
        model: a sentencepiece ``.model`` file.
    """

    def __init__(self, model: Path | str):
        if not Path(model).is_file():
            raise FileNotFoundError(f"sentencepiece model not found: {model}")
        self.model = str(model)
        self._sp = None

    def __getstate__(self):
        return {**self.__dict__, "_sp": None}

    def _processor(self):
        if self._sp is None:
            import sentencepiece

            self._sp = sentencepiece.SentencePieceProcessor(model_file=self.model)
        return self._sp

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self._processor().encode(texts)

    def id_table(self, dictionary) -> np.ndarray:
        sp = self._processor()
        return np.array([dictionary.index(sp.id_to_piece(i)) for i in range(sp.get_piece_size())], dtype=np.int64)


def gpt2_dictionary_lines(encoder_json: Path | str) -> list[str]:
    """``dict.txt`` lines covering every GPT-2 BPE id, in id order (count 1 each).

    Used when LDDL shards come without a dictionary: every id has an entry, so no
    text maps to ``<unk>``.
    """
    vocab = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    return [f"{i} 1" for i in sorted(vocab.values())]


def gpt2_decoder(encoder_json: Path | str, vocab_bpe: Path | str):
    """GPT-2's ``decode(list[int]) -> str`` from the local files (fairseq's GPT-2 encoder)."""
    for path in (encoder_json, vocab_bpe):
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} not found: GPT-2's encoder.json and vocab.bpe are needed to decode")
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    return get_encoder(str(encoder_json), str(vocab_bpe)).decode
