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


def _gpt2_byte_of_char() -> dict[str, int]:
    """GPT-2's stand-in character for each byte (its ``bytes_to_unicode``), inverted: printable bytes
    other than the space stand for themselves, the rest for chr(256), chr(257), ... in byte order."""
    own = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    table = {chr(b): b for b in own}
    for n, b in enumerate(b for b in range(256) if b not in own):
        table[chr(256 + n)] = b
    return table


def gpt2_ranks(encoder_json: str, vocab_bpe: str) -> tuple[dict[bytes, int], np.ndarray | None]:
    """tiktoken's mergeable ranks for GPT-2-style files (each byte, then each merge of ``vocab_bpe`` in
    order: the merge priority) and, where ``encoder_json`` numbers the tokens otherwise, the table from
    rank to its id. GPT-2's own files number tokens by rank (no table). A converted model's
    ``vocab.json`` (``convert.py from-hf``) numbers them in the model's dictionary order, which tiktoken's
    own loader refuses."""
    byte_of = _gpt2_byte_of_char()
    own = sorted(byte_of, key=lambda c: (c > chr(255), ord(c)))  # GPT-2's order of the 256 single bytes

    def raw(token: str) -> bytes:
        return bytes(byte_of[c] for c in token)

    ranks = {raw(c): i for i, c in enumerate(own)}
    lines = Path(vocab_bpe).read_text(encoding="utf-8").split("\n")
    for line in lines[1:] if lines and lines[0].startswith("#version") else lines:
        if line.strip():
            first, second = line.split()
            ranks.setdefault(raw(first) + raw(second), len(ranks))
    ids = {raw(k): v for k, v in json.loads(Path(encoder_json).read_text(encoding="utf-8")).items()
           if k not in ("<|endoftext|>", "<|startoftext|>")}
    if all(ids.get(b) == r for b, r in ranks.items()):
        return ranks, None
    table = np.full(len(ranks), -1, dtype=np.int64)
    for b, r in ranks.items():
        if b in ids:
            table[r] = ids[b]
    if (table < 0).any():
        missing = next(b for b, r in ranks.items() if table[r] < 0)
        raise ValueError(f"{encoder_json}: {int((table < 0).sum())} tokens of {vocab_bpe}'s merges have no id "
                         f"(first: {missing!r}); the two files are not one tokenizer's")
    return ranks, table


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

            ranks, table = gpt2_ranks(self.encoder_json, self.vocab_bpe)
            enc = tiktoken.Encoding("gpt2-local", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
            return enc, table
        if self.backend == "fairseq":
            from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

            return get_encoder(self.encoder_json, self.vocab_bpe)
        raise ValueError(f"GPT-2 backend must be tiktoken or fairseq, got {self.backend!r}")

    def __getstate__(self):
        return {**self.__dict__, "_enc": None}

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        enc = self._encoder()
        if self.backend == "tiktoken":  # one call per text: encode_ordinary_batch starts a thread pool per call
            enc, table = enc
            if table is None:
                return [enc.encode_ordinary(t) for t in texts]
            return [table[enc.encode_ordinary(t)].tolist() for t in texts]
        return [enc.encode(t) for t in texts]

    def vocab_size(self) -> int:
        return len(json.loads(Path(self.encoder_json).read_text(encoding="utf-8")))

    def encode_symbols(self, texts: list[str]) -> list[list[str]]:
        """Dictionary symbols of each text, as fairseq-preprocess reads them: GPT-2 ids as decimal strings."""
        return [list(map(str, ids)) for ids in self.encode_batch(texts)]

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

    def encode_symbols(self, texts: list[str]) -> list[list[str]]:
        """Dictionary symbols of each text, as fairseq-preprocess reads them: the pieces (a sentencepiece
        model's dictionary holds its pieces, not its ids)."""
        return self._processor().encode(texts, out_type=str)

    def id_table(self, dictionary) -> np.ndarray:
        sp = self._processor()
        return np.array([dictionary.index(sp.id_to_piece(i)) for i in range(sp.get_piece_size())], dtype=np.int64)


SENTENCEPIECE_MODEL = "sentencepiece.model"  # where lddl_preprocess.py / prepare_summarization.py leave it


class FolderCodec:
    """Text <-> dictionary symbols with the tokenizer a data folder holds: GPT-2 BPE (``encoder.json`` and
    ``vocab.bpe``; symbols are ids as strings) or sentencepiece (``sentencepiece.model``; symbols are
    pieces), whichever the folder has, GPT-2's first. What the Python API and scripts/generate.py encode
    and decode with, so that a model pretrained on sentencepiece shards summarizes as text too.

    Attributes:
        kind: ``"gpt2"`` or ``"sentencepiece"``.
        bpe: fairseq's GPT-2 encoder (``encode``/``decode`` of ids), None for sentencepiece.

    Raises:
        FileNotFoundError: the folder has neither (names the files).
    """

    def __init__(self, folder: Path | str):
        folder = Path(folder)
        self.bpe, self._sp = None, None
        if (folder / "encoder.json").is_file() and (folder / "vocab.bpe").is_file():
            from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

            self.kind = "gpt2"
            self.bpe = get_encoder(str(folder / "encoder.json"), str(folder / "vocab.bpe"))
        elif (folder / SENTENCEPIECE_MODEL).is_file():
            self.kind = "sentencepiece"
            self._sp = SentencePieceEncoder(folder / SENTENCEPIECE_MODEL)._processor()
        else:
            raise FileNotFoundError(f"{folder / 'encoder.json'} and {folder / 'vocab.bpe'} (GPT-2 BPE), or "
                                    f"{folder / SENTENCEPIECE_MODEL}, not found: the files the model's data was "
                                    "encoded with")

    def symbols(self, text: str) -> list[str]:
        """The text's dictionary symbols (a leading space is the caller's: training data has one). Text that
        does not start with a space continues a word, as GPT-2 encodes it: sentencepiece's word-start mark,
        which it puts before every text, is taken off (``"<mask>."`` gave ``▁.``, where running text has ``.``)."""
        if self.bpe is not None:
            return [str(i) for i in self.bpe.encode(text)]
        sp, pieces = self._sp, self._sp.encode(text, out_type=str)
        if pieces and text[:1] and not text[:1].isspace():
            if pieces[0] == "\u2581":
                pieces = pieces[1:]
            elif pieces[0].startswith("\u2581") and sp.piece_to_id(pieces[0][1:]) != sp.unk_id():
                pieces[0] = pieces[0][1:]
        return pieces

    def text(self, symbols: list[str]) -> str:
        """Text of dictionary symbols as fairseq writes them; other symbols (``<mask>``, ``<unk>``,
        fairseq's ``<<unk>>``) stay visible as words."""
        from bart_ext.text import gpt2_detokenize

        if self.bpe is not None:
            return gpt2_detokenize(symbols, self.bpe.decode)
        sp, out, run = self._sp, [], []

        def flush() -> None:
            if run:  # a space before the run where its first piece starts a word
                out.append((" " if run[0].startswith("\u2581") else "") + sp.decode_pieces(run))
                run.clear()

        for sym in symbols:
            if sp.piece_to_id(sym) != sp.unk_id():
                run.append(sym)
                continue
            flush()
            out.append(f" {sym}")
        flush()
        return "".join(out).strip()

    def decode(self, dictionary, tokens) -> str:
        """Text of dictionary indices (a tensor or a list), without ``<s>``, ``</s>`` and padding."""
        drop = {dictionary.bos(), dictionary.eos(), dictionary.pad()}
        return self.text([dictionary[int(t)] for t in tokens if int(t) not in drop])


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


def write_truncated_gpt2(gpt2_dir: Path | str, merges: int, out_dir: Path | str) -> Path:
    """GPT-2's byte-level BPE with only its first ``merges`` merges: ``out_dir/{encoder.json,vocab.bpe}``.

    GPT-2 gives merge ``r`` (0-based, in priority order) the id ``256 + r`` after its 256 byte
    tokens, so applying the first ``merges`` merges yields exactly the ids below ``256 + merges``,
    and their strings are GPT-2's. The result is still lossless (any text encodes, through bytes
    where needed) and decodes with the same code; it only splits rare words into more pieces. A
    narrow model's output layer is ``256 + merges`` rows instead of 50,257: on a CPU the softmax is
    most of a small BART's step. ``<|endoftext|>`` is left out (BART's specials are fairseq's own).

    Raises:
        FileNotFoundError: ``gpt2_dir`` lacks ``encoder.json`` or ``vocab.bpe``.
        ValueError: ``merges`` is not between 0 and the number of merges, or the files are not
            GPT-2's layout (a merge's token without the id ``256 + rank``).
    """
    gpt2_dir, out_dir = Path(gpt2_dir), Path(out_dir)
    for name in ("encoder.json", "vocab.bpe"):
        if not (gpt2_dir / name).is_file():
            raise FileNotFoundError(f"{gpt2_dir / name} not found: GPT-2's encoder.json and vocab.bpe are needed")
    encoder = json.loads((gpt2_dir / "encoder.json").read_text(encoding="utf-8"))
    lines = (gpt2_dir / "vocab.bpe").read_text(encoding="utf-8").splitlines()
    header, rules = (lines[:1], lines[1:]) if lines and lines[0].startswith("#version") else ([], lines)
    rules = [r for r in rules if r.strip()]
    if not 0 <= merges <= len(rules):
        raise ValueError(f"merges must be between 0 and {len(rules)} ({gpt2_dir / 'vocab.bpe'}), got {merges}")
    for rank, rule in enumerate(rules[:merges]):
        a, b = rule.split(" ")
        if encoder.get(a + b) != 256 + rank:
            raise ValueError(f"{gpt2_dir / 'vocab.bpe'} line {rank + 2}: merge {rule!r} is not id {256 + rank} in "
                             f"{gpt2_dir / 'encoder.json'} (not GPT-2's layout)")
    kept = {tok: i for tok, i in encoder.items() if i < 256 + merges}
    if len(kept) != 256 + merges:
        raise ValueError(f"{gpt2_dir / 'encoder.json'}: ids 0-255 are not GPT-2's byte tokens")
    out_dir.mkdir(parents=True, exist_ok=True)
    from bart_ext.files import write_atomic  # callers skip the folder once vocab.bpe exists: write it last, whole

    write_atomic(out_dir / "encoder.json", json.dumps(kept, ensure_ascii=False))
    write_atomic(out_dir / "vocab.bpe", "\n".join(header + rules[:merges]) + "\n")
    return out_dir
