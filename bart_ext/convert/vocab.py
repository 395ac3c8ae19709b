"""Tokenizer files: fairseq's ``dict.txt`` + GPT-2 ``encoder.json`` / ``vocab.bpe`` <-> transformers'
byte-level BPE ``vocab.json`` / ``merges.txt``.

fairseq encodes text in two steps: GPT-2's BPE gives token ids (``encoder.json``), written as
decimal strings, and ``dict.txt`` maps each string to a model index (``<unk>`` when absent).
transformers' ``vocab.json`` maps token strings straight to model indices, in the model's own
dictionary order (as ``facebook/bart-large``'s does). The merges are the same file in both worlds.

Out of fairseq (``export_vocab``): index ``i`` gets the GPT-2 token of ``dict[i]``; GPT-2 tokens the
dictionary lacks get ids after the model's rows (``hf`` gives those rows ``<unk>``'s embedding and
``-inf`` logit bias), because a BPE vocabulary must hold every merge result.
Into fairseq (``import_vocab``): ``encoder.json`` is ``vocab.json`` without the special tokens, so
the "GPT-2 id" of a token is its model index and ``dict.txt`` lists ``"4"``, ``"5"``, ... in order;
indices no token names become ``madeupwordNNNN`` (fairseq's filler), and ``<mask>`` stays out of
``dict.txt`` because bart_ext's tasks append it last, as fairseq's ``denoising`` does.
"""
from __future__ import annotations

import json
from pathlib import Path

from bart_ext.convert.hf import ConversionError
from bart_ext.files import read_lines

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")
MASK = "<mask>"


def read_dictionary(path: Path) -> list[str]:
    """All symbols of a fairseq ``dict.txt`` in index order, fairseq's four specials first (``<mask>`` not added)."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"{path}: dictionary not found")
    symbols = list(SPECIALS)
    for n, line in enumerate(read_lines(path), 1):  # as fairseq's Dictionary reads it (no U+2028 breaks)
        parts = line.rsplit(" ", 2)
        if not parts[0]:
            raise ConversionError(f"{path}:{n}: empty dictionary line")
        symbols.append(parts[0])
    return symbols


def _merges_text(path: Path) -> str:
    text = Path(path).read_text(encoding="utf-8")
    if not text.startswith("#version"):  # fairseq's reader skips the first line, transformers' too
        text = "#version: 0.2\n" + text
    return text if text.endswith("\n") else text + "\n"


def export_vocab(symbols: list[str], encoder_json: Path, vocab_bpe: Path, out_dir: Path) -> int:
    """Write ``vocab.json`` and ``merges.txt`` for a model whose dictionary is ``symbols``; return how many
    GPT-2 tokens lie outside it (ids ``len(symbols)`` on).

    Args:
        symbols: the fairseq dictionary, index order, ``<mask>`` included where the model has it.
        encoder_json: the GPT-2 ``encoder.json`` the data was encoded with.
        vocab_bpe: its ``vocab.bpe``.
        out_dir: where to write.
    """
    for f in (encoder_json, vocab_bpe):
        if not Path(f).is_file():
            if (Path(f).parent / "sentencepiece.model").is_file():
                raise ConversionError(f"{Path(f).parent}: the model's data is sentencepiece-encoded (sentencepiece.model), "
                                      "and the export writes GPT-2 byte-level BPE tokenizers only")
            raise ConversionError(f"{f}: GPT-2 BPE file not found (the model's data folder holds encoder.json "
                                  "and vocab.bpe; pass --gpt2-encoder-json / --gpt2-vocab-bpe)")
    gpt2 = json.loads(Path(encoder_json).read_text(encoding="utf-8"))
    by_id = {i: tok for tok, i in gpt2.items()}
    vocab: dict[str, int] = {}
    for i, sym in enumerate(symbols):
        if i < len(SPECIALS) or sym == MASK or not sym.isdigit():
            token = sym  # specials, <mask>, fairseq's madeupwordNNNN fillers
        elif int(sym) in by_id:
            token = by_id[int(sym)]
        else:
            raise ConversionError(f"dictionary entry {i} ({sym!r}) is not a token id of {encoder_json}")
        if token in vocab:
            raise ConversionError(f"dictionary entries {vocab[token]} and {i} are the same token {token!r}")
        vocab[token] = i
    if not any(s.isdigit() for s in symbols[len(SPECIALS):]):
        raise ConversionError("the dictionary holds no GPT-2 BPE ids: only GPT-2 BPE models export a tokenizer")
    extra = 0
    for i in sorted(by_id):
        if by_id[i] not in vocab:
            vocab[by_id[i]] = len(symbols) + extra
            extra += 1
    out_dir = Path(out_dir)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (out_dir / "merges.txt").write_text(_merges_text(vocab_bpe), encoding="utf-8")
    return extra


def set_classifier_template(out_dir: Path, symbols: list[str], init_token: int | None,
                            separator_token: int | None) -> str:
    """Make ``out_dir``'s tokenizer join a text, or a pair of texts, as ``sentence_prediction`` fed the
    classifier: ``[init] A </s>`` and ``[init] A </s> [separator] B </s>``. transformers' BART tokenizer
    joins a pair as RoBERTa's ``<s> A </s></s> B </s>``, where fairseq's BART GLUE recipe (no
    ``--separator-token``) trained on ``<s> A </s> B </s>``: an exported MNLI or RTE classifier read an extra
    ``</s>`` in every pair. The folder then loads as transformers' generic fast tokenizer, which keeps the
    template of its ``tokenizer.json`` (``RobertaTokenizer`` rebuilds its own). Returns the pair template."""
    from tokenizers import processors
    from transformers import AutoTokenizer

    eos = symbols.index("</s>")
    specials = {"</s>": eos}
    init = sep = ""
    if init_token is not None:
        init, specials[symbols[init_token]] = symbols[init_token] + " ", init_token
    if separator_token is not None:
        sep, specials[symbols[separator_token]] = symbols[separator_token] + " ", separator_token
    single, pair = f"{init}$A </s>", f"{init}$A </s> {sep}$B </s>"
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=sorted(specials.items(), key=lambda kv: kv[1]))
    tok.save_pretrained(str(out_dir))
    config_path = Path(out_dir) / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return pair


def save_hf_tokenizer(out_dir: Path, model_max_length: int, add_prefix_space: bool) -> None:
    """Complete ``out_dir``'s ``vocab.json`` / ``merges.txt`` into a transformers tokenizer folder
    (``BartTokenizer``: byte-level BPE, ``<s> ... </s>``), as ``AutoTokenizer`` loads it;
    ``truncation=True`` cuts inputs to ``model_max_length`` tokens, ``<s>`` and ``</s>`` included;
    ``add_prefix_space`` puts a space before a text's first word."""
    from transformers import BartTokenizer

    # reads vocab.json and merges.txt (transformers 4 and 5)
    tok = BartTokenizer.from_pretrained(str(out_dir), model_max_length=model_max_length,
                                        add_prefix_space=add_prefix_space)
    tok.save_pretrained(str(out_dir))


def classifier_layout(hf_dir: Path, vocab: dict[str, int]) -> tuple[int | None, int | None]:
    """``(init_token, separator_token)`` of ``sentence_prediction`` that build a text, or a pair, as the
    transformers tokenizer folder joins them: RoBERTa's ``<s> A </s></s> B </s>`` (``RobertaProcessing``, and
    BART's tokenizer without a ``tokenizer.json``) is init ``<s>`` and separator ``</s>``; the
    ``TemplateProcessing`` that ``to-hf`` writes for a classifier fine-tuned as fairseq's BART GLUE recipe
    does, ``<s> A </s> B </s>``, has no separator."""
    path = Path(hf_dir) / "tokenizer.json"
    post = {}
    if path.is_file():
        post = json.loads(path.read_text(encoding="utf-8")).get("post_processor") or {}
    if post.get("type") == "TemplateProcessing":
        names = [next(iter(item.values()))["id"] for item in post.get("pair") or []]
        if "A" in names and "B" in names and names.index("A") <= 1 and names[-1] == "</s>":
            before, between = names[: names.index("A")], names[names.index("A") + 1: names.index("B")]
            if between[:1] == ["</s>"] and len(between) <= 2 and names.index("B") == len(names) - 2:
                missing = [t for t in before + between[1:] if t not in vocab]
                if missing:
                    raise ConversionError(f"{path}: the pair template's {missing[0]} is not in the vocabulary")
                return (vocab[before[0]] if before else None), (vocab[between[1]] if len(between) == 2 else None)
        raise ConversionError(f"{path}: post_processor's pair template {names} is not [init] A </s> [separator] B </s>, "
                              "the input fairseq's sentence_prediction builds")
    if post.get("type") not in (None, "RobertaProcessing"):
        raise ConversionError(f"{path}: post_processor is {post.get('type')!r}; a BART classifier's tokenizer joins "
                              "pairs with RobertaProcessing or a TemplateProcessing")
    return vocab["<s>"], vocab["</s>"]


def tokenizer_adds_prefix_space(hf_dir: Path) -> bool:
    """Whether a transformers tokenizer folder puts a space before a text's first word (its
    ``tokenizer_config.json``, else its ``tokenizer.json``'s ByteLevel pre-tokenizer; BART's: no)."""
    hf_dir = Path(hf_dir)
    for name in ("tokenizer_config.json", "tokenizer.json"):
        path = hf_dir / name
        if not path.is_file():
            continue
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ConversionError(f"{path}: not JSON ({e})") from None
        if name == "tokenizer.json":
            config = config.get("pre_tokenizer") or {}
        if "add_prefix_space" in config:
            return bool(config["add_prefix_space"])
    return False


def import_vocab(hf_dir: Path, rows: int, out_dir: Path) -> bool:
    """Write ``dict.txt``, ``encoder.json`` and ``vocab.bpe`` into ``out_dir`` for a transformers model with
    ``rows`` dictionary rows; returns whether the model has a ``<mask>`` row (its last).

    Raises ``ConversionError`` naming the file for a tokenizer fairseq's ``gpt2`` BPE cannot reproduce.
    """
    vocab, merges, vocab_path = read_bpe_files(Path(hf_dir))
    for i, tok in enumerate(SPECIALS):
        if vocab.get(tok) != i:
            raise ConversionError(
                f"{vocab_path}: {tok} has id {vocab.get(tok)!r}; fairseq's dictionaries put it at {i}")
    owner: dict[int, str] = {}
    for tok, i in vocab.items():
        if i in owner:
            raise ConversionError(f"{vocab_path}: tokens {owner[i]!r} and {tok!r} share id {i}")
        owner[i] = tok
    mask = vocab.get(MASK)
    has_mask = mask is not None and mask < rows
    if has_mask and mask != rows - 1:
        raise ConversionError(f"{vocab_path}: <mask> has id {mask}, not the last model row ({rows - 1}); "
                              "bart_ext's tasks append <mask> after the dictionary")
    lines, filler = [], 0
    for i in range(len(SPECIALS), rows - int(has_mask)):
        tok = owner.get(i)
        if tok is None or tok in SPECIALS or tok == MASK:
            lines.append(f"madeupword{filler:04d} 0")
            filler += 1
        else:
            lines.append(f"{i} 1")
    encoder = {tok: i for tok, i in vocab.items() if tok not in SPECIALS and tok != MASK}
    out_dir = Path(out_dir)
    (out_dir / "dict.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out_dir / "encoder.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (out_dir / "vocab.bpe").write_text(merges, encoding="utf-8")
    return has_mask


def read_bpe_files(hf_dir: Path) -> tuple[dict[str, int], str, Path]:
    """A byte-level BPE tokenizer's vocabulary (token -> id), its merges as ``vocab.bpe`` text, and the
    file to name in errors about the vocabulary: ``vocab.json`` + ``merges.txt``, or, where a folder
    has only ``tokenizer.json`` (what ``save_pretrained`` writes in transformers 5), the same tables
    from it. A ``tokenizer.json`` that fairseq's ``gpt2`` BPE would not reproduce (another model type,
    a normalizer, a pre-tokenizer other than GPT-2's byte-level split, subword affixes, BPE dropout) is
    refused naming the field."""
    vocab_path, merges_path, joined = hf_dir / "vocab.json", hf_dir / "merges.txt", hf_dir / "tokenizer.json"
    if not (vocab_path.is_file() and merges_path.is_file()) and joined.is_file():
        return _read_tokenizer_json(joined)
    for f in (vocab_path, merges_path):
        if not f.is_file():
            raise ConversionError(f"{f}: not found; from-hf needs the byte-level BPE tokenizer files vocab.json "
                                  "and merges.txt (or a tokenizer.json holding them) beside the model")
    try:
        vocab = json.loads(vocab_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{vocab_path}: not JSON ({e})") from None
    return vocab, _merges_text(merges_path), vocab_path


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], str, Path]:
    try:
        tok = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not JSON ({e})") from None
    model = tok.get("model") or {}

    def refuse(field: str, value, want: str):
        raise ConversionError(f"{path}: {field} is {value!r}; from-hf reads byte-level BPE tokenizers as GPT-2's "
                              f"({want}), which fairseq's gpt2 BPE reproduces")

    if model.get("type") != "BPE":
        refuse("model.type", model.get("type"), "BPE")
    for field, want in (("dropout", None), ("continuing_subword_prefix", ""), ("end_of_word_suffix", "")):
        if model.get(field) not in (want, None):
            refuse(f"model.{field}", model.get(field), f"{want!r}" if want is not None else "none")
    if model.get("ignore_merges"):
        refuse("model.ignore_merges", model["ignore_merges"], "false")
    if tok.get("normalizer") is not None:
        refuse("normalizer", tok["normalizer"].get("type"), "none")
    pre = tok.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("use_regex", True) is not True:
        refuse("pre_tokenizer", {k: pre.get(k) for k in ("type", "use_regex") if k in pre}, "ByteLevel with its regex")
    vocab = dict(model.get("vocab") or {})
    for added in tok.get("added_tokens") or []:  # <mask> and the specials may be added tokens only
        vocab.setdefault(added["content"], added["id"])
    lines = ["#version: 0.2"]
    for merge in model.get("merges") or []:  # "a b" (tokenizers < 0.20) or ["a", "b"]
        pair = merge.split(" ") if isinstance(merge, str) else list(merge)
        if len(pair) != 2:
            refuse("a merge", merge, "two tokens")
        lines.append(" ".join(pair))
    return vocab, "\n".join(lines) + "\n", path
