"""fairseq's released BART checkpoints (bart.base, bart.large, bart.large.cnn, bart.large.xsum) in our tasks.

The real files cannot be downloaded here, so each is rebuilt with its exact structure at tiny width:
fairseq's own ``BARTModel`` under ``--arch bart_large`` (Post-LN), an argparse ``args`` Namespace with
its task (``denoising`` for the pretrained files, ``translation`` for the fine-tuned ones), and the
embedding rows of the release (dictionary + ``<mask>``; no ``<mask>``; bart.base's 51,201 with
``madeupword`` fillers up to 0938). bart.large is written in the pre-0.9 key layout (``in_proj_weight``,
no ``output_projection``, ``version`` buffers).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import pytest
import torch

from tests.integration.fairseq_run import USER_DIR, run

TINY = ["--encoder-embed-dim", "12", "--encoder-ffn-embed-dim", "14", "--encoder-layers", "2",
        "--decoder-layers", "1", "--encoder-attention-heads", "3"]
# name: (task it was trained with, rows beyond its dict.txt's 4 specials, old key layout, dict.txt fillers)
RELEASES = {
    "bart.large": ("denoising", "mask", True, 3),
    "bart.large.cnn": ("translation", "none", False, 3),
    "bart.large.xsum": ("translation", "none", False, 3),
    "bart.base": ("denoising", "mask", False, 939),
}


@pytest.fixture(scope="module")
def released(data_dir, cli_env, tmp_path_factory) -> Path:
    """dict.txt files of the releases' sizes and a small summarization set binarized with them."""
    root = tmp_path_factory.mktemp("released")
    gpt2 = __import__("json").loads((data_dir / "gpt2" / "encoder.json").read_text(encoding="utf-8"))
    corpus = [line.split()[0] for line in (data_dir / "bin" / "dict.txt").read_text().splitlines()]
    corpus = [s for s in corpus if s.isdigit()]  # without its madeupword fillers
    ids = corpus + [str(i) for i in range(len(gpt2)) if str(i) not in set(corpus)]  # frequency order, then the rest
    for fillers in (3, 939):
        lines = [f"{s} 1" for s in ids] + [f"madeupword{i:04d} 0" for i in range(fillers)]
        (root / f"dict{fillers}.txt").write_text("\n".join(lines) + "\n")
    bpe = data_dir.parent / "aclsum_summ" / "bpe"
    raw = root / "raw"
    raw.mkdir()
    for split, n in (("train", 24), ("valid", 4), ("test", 4)):
        for side, cut in (("source", 120), ("target", 40)):
            rows = (bpe / f"{split}.{side}").read_text().splitlines()[:n]
            (raw / f"{split}.{side}").write_text("\n".join(" ".join(r.split()[:cut]) for r in rows) + "\n")
    base = root / "bin3"
    run(["fairseq-preprocess", "--source-lang", "source", "--target-lang", "target", "--trainpref", str(raw / "train"),
         "--validpref", str(raw / "valid"), "--testpref", str(raw / "test"), "--destdir", str(base), "--srcdict",
         str(root / "dict3.txt"), "--tgtdict", str(root / "dict3.txt"), "--workers", "1"], cli_env)
    big = root / "bin939"  # bart.base: the same ids (its first 50,260 entries are bart.large's), a longer dict
    big.mkdir()
    for f in base.iterdir():
        (big / f.name).write_bytes(f.read_bytes())
    for side in ("source", "target"):
        (big / f"dict.{side}.txt").write_bytes((root / "dict939.txt").read_bytes())
    return root


def build_release(name: str, root: Path, seed: int = 0) -> tuple[Path, torch.nn.Module]:
    """The release's model.pt at tiny width, and fairseq's own BARTModel holding the same weights."""
    import user_dir  # noqa: F401  (argparse Namespace allowed in checkpoints)
    from fairseq import options
    from fairseq.data import Dictionary
    from fairseq.models.bart import BARTModel

    task, rows, old, fillers = RELEASES[name]
    dictionary = Dictionary.load(str(root / f"dict{fillers}.txt"))
    if rows == "mask":
        dictionary.add_symbol("<mask>")
    parser = options.get_training_parser()
    args = options.parse_args_and_arch(parser, [str(root), "--task", task, "--arch", "bart_large", *TINY,
                                                "--decoder-attention-heads", "3",
                                                "--max-source-positions", "1024", "--max-target-positions", "1024"])
    fake_task = argparse.Namespace(source_dictionary=dictionary, target_dictionary=dictionary)
    torch.manual_seed(seed)
    model = BARTModel.build_model(args, fake_task).eval()
    with torch.no_grad():  # BART's LayerNorms start at (1, 0): make them matter
        for n, p in model.named_parameters():
            if "layer_norm" in n or "layernorm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    if old:
        for key in [k for k in state if k.endswith(("q_proj.weight", "q_proj.bias"))]:
            base, kind = key.rsplit(".q_proj.", 1)
            state[f"{base}.in_proj_{kind}"] = torch.cat([state.pop(f"{base}.{p}.{kind}")
                                                         for p in ("q_proj", "k_proj", "v_proj")])
        del state["decoder.output_projection.weight"]
    path = root / f"{name}.pt"
    torch.save({"args": args, "model": state, "extra_state": {"train_iterator": {"epoch": 3, "iterations_in_epoch": 0}},
                "optimizer_history": [{"criterion_name": "LabelSmoothedCrossEntropyCriterion",
                                       "optimizer_name": "FairseqAdam", "lr_scheduler_state": {"best": 2.5},
                                       "num_updates": 20000}], "last_optimizer_state": None}, path)
    return path, model


@pytest.mark.parametrize("name", list(RELEASES))
def test_released_layout_loads_with_fairseq_logits(released, name):
    """Our Post-LN model with the task's dictionary (``<mask>`` appended) gives fairseq BART's logits."""
    from fairseq import checkpoint_utils

    from bart_ext import model as core
    from bart_ext.adapters.fairseq_model import BartEncoderDecoder, BartDecoder, BartEncoder
    from tests.helpers import preln_args

    path, theirs = build_release(name, released)
    from fairseq.data import Dictionary

    dictionary = Dictionary.load(str(released / f"dict{RELEASES[name][3]}.txt"))
    dictionary.add_symbol("<mask>")  # what bart_summarization and bart_denoising do
    args = preln_args(encoder_layers=2, decoder_layers=1, encoder_embed_dim=12, encoder_ffn_embed_dim=14,
                      encoder_attention_heads=3, max_positions=1024, post_ln=True, compile=False,
                      bf16_autocast=False, no_tf32=True, checkpoint_activations=False)
    cfg = BartEncoderDecoder.core_config(args, dictionary)
    embed = torch.nn.Embedding(cfg.vocab_size, cfg.embed_dim, padding_idx=cfg.padding_idx)
    ours = BartEncoderDecoder(args, BartEncoder(cfg, embed, dictionary), BartDecoder(cfg, embed, dictionary)).eval()
    state = checkpoint_utils.load_checkpoint_to_cpu(str(path))
    ours.load_state_dict(state["model"])
    assert isinstance(ours.encoder, core.Encoder)
    torch.manual_seed(1)
    src = torch.randint(4, 50000, (3, 9))
    src[1, 6:] = 1  # right padding
    prev = torch.randint(4, 50000, (3, 7))
    with torch.no_grad():
        mine = ours(src, src.ne(1).sum(1), prev)[0]
        ref = theirs(src, src.ne(1).sum(1), prev)[0]
    n = ref.size(-1)
    assert mine.size(-1) == len(dictionary) and n in (len(dictionary), len(dictionary) - 1)
    assert torch.allclose(mine[..., :n], ref, atol=1e-5, rtol=1e-5)
    # every layer's states, as fairseq's return_all_hiddens gives them (BARTHubInterface.extract_features)
    with torch.no_grad():
        states = [ours(src, src.ne(1).sum(1), prev, return_all_hiddens=True)[1]["inner_states"],
                  ours.encoder(src, src.ne(1).sum(1), return_all_hiddens=True)["encoder_states"]]
        expected = [theirs(src, src.ne(1).sum(1), prev, return_all_hiddens=True)[1]["inner_states"],
                    theirs.encoder(src, src.ne(1).sum(1), return_all_hiddens=True)["encoder_states"]]
    assert [len(s) for s in states] == [len(s) for s in expected] == [2, 3]
    for a, b in zip(states[0] + states[1], expected[0] + expected[1]):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", list(RELEASES))
def test_released_layout_finetunes_and_generates(released, cli_env, tmp_path, name):
    path, _ = build_release(name, released)
    data = released / f"bin{RELEASES[name][3]}"
    log = run(["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "bart_summarization", "--arch",
               "bart_large_preln", "--post-ln", *TINY, "--finetune-from-model", str(path),
               "--criterion", "bart_label_smoothed_cross_entropy",
               "--label-smoothing", "0.1", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048",
               "--max-update", "3", "--truncate-source", "--cpu", "--num-workers", "0", "--seed", "3",
               "--required-batch-size-multiple", "1",
               "--save-dir", str(tmp_path / "ft"), "--no-epoch-checkpoints", "--log-format", "json",
               "--log-interval", "1"], cli_env)
    assert re.search(r"Loaded checkpoint .*" + re.escape(path.name) + r" \(epoch \d+ @ 0 updates\)", log), log[-2000:]
    assert '"num_updates": "3"' in log
    out = run(["fairseq-generate", str(data), "--user-dir", USER_DIR, "--task", "bart_summarization", "--path",
               str(tmp_path / "ft" / "checkpoint_last.pt"), "--gen-subset", "test", "--beam", "2", "--max-len-b",
               "8", "--batch-size", "4", "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0"], cli_env)
    hyps = re.findall(r"^H-(\d+)\t", out, re.M)
    assert sorted(map(int, hyps)) == [0, 1, 2, 3], out[-2000:]


def test_fairseqs_hub_on_a_release_stays_fairseqs(released, data_dir):
    """Patch 10 (our models' own tokenizer in BARTModel.from_pretrained) leaves fairseq's BART as it was: the
    bart.large.cnn layout gets fairseq's BARTHubInterface and its gpt2 BPE, no space added to the first word."""
    import user_dir  # noqa: F401
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE
    from fairseq.models.bart import BARTHubInterface, BARTModel

    path, _ = build_release("bart.large.cnn", released)
    gpt2 = data_dir / "gpt2"
    hub = BARTModel.from_pretrained(str(released), checkpoint_file=path.name, data_name_or_path=str(released / "bin3"),
                                    gpt2_encoder_json=str(gpt2 / "encoder.json"), gpt2_vocab_bpe=str(gpt2 / "vocab.bpe"))
    assert type(hub) is BARTHubInterface and type(hub.bpe) is GPT2BPE
    text = "Handling terminology is an important matter."
    d = hub.task.source_dictionary
    assert hub.encode(text).tolist() == [d.bos(), *(d.index(t) for t in hub.bpe.encode(text).split()), d.eos()]
    assert hub.bpe.encode(text) != hub.bpe.encode(" " + text)


def test_wrong_dictionary_for_a_release_is_refused(released, cli_env, tmp_path):
    """bart.base's 51,201 rows with bart.large's dict.txt: one error naming both sizes and the fix, on
    the last line fairseq prints (patch 9: fairseq's own last line named only the checkpoint)."""
    path, _ = build_release("bart.base", released)
    with pytest.raises(AssertionError, match=r"checkpoint has 51201 embedding rows .* 50265 entries \(with <mask>\)") as err:
        run(["fairseq-train", str(released / "bin3"), "--user-dir", USER_DIR, "--task", "bart_summarization",
             "--arch", "bart_large_preln", "--post-ln", *TINY, "--restore-file", str(path), "--reset-optimizer",
             "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048", "--max-update", "1", "--cpu",
             "--truncate-source", "--save-dir", str(tmp_path / "ft")], cli_env)
    last = str(err.value).strip().splitlines()[-1]
    assert re.match(rf"Exception: Cannot load model parameters from checkpoint {re.escape(str(path))}; .* The cause: "
                    r"DictionarySizeError: checkpoint has 51201 embedding rows \(encoder.embed_tokens.weight\)", last), last
    assert not (tmp_path / "ft" / "checkpoint_last.pt").exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
