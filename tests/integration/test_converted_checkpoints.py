"""A transformers model brought in with ``convert.py from-hf``: fine-tuned with ``--finetune-from-model`` and
``--restore-file`` in ``bart_summarization``, generated from with ``fairseq-generate --path``."""
from __future__ import annotations

import re
import sys

import pytest

from tests.integration.fairseq_run import USER_DIR, run

pytest.importorskip("transformers")

from tests.unit.test_convert import make_hf_folder  # noqa: E402

SHAPE = ["--encoder-embed-dim", "12", "--encoder-ffn-embed-dim", "14", "--encoder-layers", "2", "--decoder-layers",
         "1", "--encoder-attention-heads", "3", "--max-positions", "64"]


@pytest.fixture(scope="module")
def converted(data_dir, cli_env, tmp_path_factory):
    """from-hf of a random mBART-layout model, and summarization text prepared for it as the README says:
    ``prepare_summarization.py --raw DIR --dict OUT/dict.txt --gpt2 OUT`` (BPE with the converted files,
    whose encoder.json numbers tokens in the model's order, binarized with its dictionary)."""
    from fairseq.data.encoders.gpt2_bpe_utils import get_encoder

    from scripts.convert import main as convert

    root = tmp_path_factory.mktemp("converted")
    make_hf_folder(root / "hf", data_dir / "gpt2", "mbart")
    convert(["from-hf", str(root / "hf"), str(root / "model")])
    model = root / "model"
    texts = data_dir.parent / "aclsum_summ" / "bpe"
    gpt2 = get_encoder(str(data_dir / "gpt2" / "encoder.json"), str(data_dir / "gpt2" / "vocab.bpe"))
    raw = root / "raw"
    raw.mkdir()
    for split, n in (("train", 16), ("valid", 4), ("test", 4)):
        for side, cut in (("source", 50), ("target", 20)):
            lines = (texts / f"{split}.{side}").read_text().splitlines()[:n]
            text = [gpt2.decode([int(t) for t in line.split()[:cut]]).strip() for line in lines]
            (raw / f"{split}.{side}").write_text("\n".join(text) + "\n")
    run([sys.executable, "scripts/prepare_summarization.py", "--raw", str(raw), "--dict", str(model / "dict.txt"),
         "--gpt2", str(model), "--out", str(root / "data"), "--workers", "1"], cli_env)
    return model / "checkpoint.pt", root / "data" / "bin"


def finetune(data, save_dir, cli_env, *how):
    return run(["fairseq-train", str(data), "--user-dir", USER_DIR, "--task", "bart_summarization", "--arch",
                "bart_preln", *SHAPE, *how, "--criterion", "bart_label_smoothed_cross_entropy", "--label-smoothing",
                "0.1", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "1024", "--max-update", "2", "--cpu",
                "--num-workers", "0", "--required-batch-size-multiple", "1", "--disable-validation",
                "--save-dir", str(save_dir), "--no-epoch-checkpoints"], cli_env)


@pytest.mark.parametrize("how", ["finetune-from-model", "restore-file"])
def test_converted_checkpoint_finetunes(converted, cli_env, tmp_path, how):
    ckpt, data = converted
    flags = ["--finetune-from-model", str(ckpt)] if how == "finetune-from-model" else [
        "--restore-file", str(ckpt), "--reset-optimizer", "--reset-dataloader", "--reset-meters"]
    log = finetune(data, tmp_path / "ft", cli_env, *flags)
    assert re.search(r"Loaded checkpoint .*checkpoint\.pt \(epoch 1 @ 0 updates\)", log), log[-2000:]
    assert (tmp_path / "ft" / "checkpoint_last.pt").exists()


def test_converted_checkpoint_generates(converted, cli_env):
    ckpt, data = converted
    out = run(["fairseq-generate", str(data), "--user-dir", USER_DIR, "--task", "bart_summarization", "--path",
               str(ckpt), "--gen-subset", "test", "--beam", "2", "--max-len-b", "6", "--batch-size", "4",
               "--required-batch-size-multiple", "1", "--cpu", "--num-workers", "0"], cli_env)
    assert sorted(map(int, re.findall(r"^H-(\d+)\t", out, re.M))) == [0, 1, 2, 3], out[-2000:]



def test_python_api_on_a_converted_checkpoint(converted, tmp_path):
    """bart_ext.load on from-hf's folder: encode gives transformers' tokenizer ids (the source's convention,
    no space before the first word, until the model is trained here), and fill_mask runs."""
    from transformers import AutoTokenizer

    import bart_ext

    ckpt, _ = converted
    model = bart_ext.load(ckpt)
    tok = AutoTokenizer.from_pretrained(str(ckpt.parent.parent / "hf"))
    text = "We propose a new method for parsing long sentences."
    assert model.encode(text).tolist() == tok(text)["input_ids"] != tok(" " + text)["input_ids"]
    assert model.decode(model.encode(text)) == text
    masked = model.encode("We propose a <mask> for parsing.").tolist()
    assert masked.count(tok.mask_token_id) == 1 and masked[0] == tok.bos_token_id and masked[-1] == tok.eos_token_id
    out = model.fill_mask(["We propose a <mask> for parsing."], topk=2)
    assert len(out) == 1 and len(out[0]) == 2 and all(isinstance(t, str) and s <= 0 for t, s in out[0])


def test_text_conventions_after_training_here(converted, cli_env, tmp_path):
    """A converted model fine-tuned here reads text as bart_ext's data preparation writes it (a space before
    the first word): bart_ext.load and to-hf's tokenizer follow; the untrained import exports without it."""
    import json

    from transformers import AutoTokenizer

    import bart_ext
    from scripts.convert import main as convert

    ckpt, data = converted
    finetune(data, tmp_path / "ft", cli_env, "--finetune-from-model", str(ckpt))
    tuned = tmp_path / "ft" / "checkpoint_last.pt"
    text = "We propose a new method for parsing long sentences."
    tok = AutoTokenizer.from_pretrained(str(ckpt.parent.parent / "hf"))
    assert bart_ext.load(tuned).encode(text).tolist() == tok(" " + text)["input_ids"]  # its task.data's BPE files
    for source, spaced in ((ckpt, False), (tuned, True)):
        convert(["to-hf", str(source), str(tmp_path / f"hf_{spaced}"), "--data", str(ckpt.parent)])
        config = json.loads((tmp_path / f"hf_{spaced}" / "tokenizer_config.json").read_text())
        assert config["add_prefix_space"] is spaced
        exported = AutoTokenizer.from_pretrained(str(tmp_path / f"hf_{spaced}"))
        assert exported(text)["input_ids"] == tok((" " if spaced else "") + text)["input_ids"]


def test_python_api_from_a_script_outside_the_repository(converted, cli_env, tmp_path):
    """bart_ext.load in a user's own script, run from another directory with nothing on PYTHONPATH: the
    plugin registers itself (it used to need ``import user_dir`` from the repository root)."""
    import subprocess

    ckpt, _ = converted
    script = tmp_path / "mine.py"
    script.write_text("import sys\nimport bart_ext\nm = bart_ext.load(sys.argv[1])\n"
                      "print('summary:', m.summarize(['We propose a new parser.'], beam=2, min_len=1, max_len_b=4))\n")
    env = {k: v for k, v in cli_env.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, str(script), str(ckpt)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^summary: \['.*'\]$", out.stdout, re.M), out.stdout


@pytest.mark.parametrize("max_source_positions", [32, 1024])
def test_interactive_reads_running_text_and_cuts_long_sources(converted, cli_env, tmp_path, max_source_positions):
    """fairseq-interactive with --bpe bart_gpt2 encodes a line as our data preparation does (a space before
    its first word), and --truncate-source cuts a text longer than the model's 64 positions as the
    binarized data is cut (it was refused as an invalid size), to --max-source-positions or, where that
    asks for more than the model has (the README's 1024, bart.large's, on a smaller model), to the model's."""
    from bart_ext.bpe import GPT2Encoder
    from bart_ext.summarization_data import encode_lines

    ckpt, data = converted
    text = "Handling terminology " + " ".join(["is an important matter in machine translation ."] * 12)
    (tmp_path / "in.txt").write_text(text + "\n")
    out = run(["fairseq-interactive", str(data), "--user-dir", USER_DIR, "--task", "bart_summarization", "--path",
               str(ckpt), "--bpe", "bart_gpt2", "--gpt2-encoder-json", str(data / "encoder.json"),
               "--gpt2-vocab-bpe", str(data / "vocab.bpe"), "--truncate-source", "--max-source-positions",
               str(max_source_positions), "--beam", "2", "--max-len-b", "5", "--cpu", "--input",
               str(tmp_path / "in.txt")], cli_env)
    source = re.search(r"^S-0\t(.*)$", out, re.M).group(1).split()
    ours = encode_lines([text], GPT2Encoder(data / "encoder.json", data / "vocab.bpe"))[0].split()
    kept = min(max_source_positions, 64) - 2  # <s> and </s> take two of the positions
    assert len(ours) > 64 and source == ours[:kept], (source, ours[:kept])
    assert re.search(r"^H-0\t", out, re.M)
    assert ("the model has 64 source positions, fewer than --max-source-positions 1024" in out) == (
        max_source_positions > 64)


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
