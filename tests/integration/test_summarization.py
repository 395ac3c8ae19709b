"""Summarization end to end: the demo in small (LDDL -> pretrain -> fine-tune -> generate -> ROUGE),
both generation presets through fairseq-generate, <s> forced first, and trigram blocking equal to
fairseq's own loop on the same model and inputs."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bart_ext.adapters.beam_generator import BeamSequenceGenerator
from bart_ext.curves import read_log
from bart_ext.summarization_data import load_preset, read_generate_output
from tests import launcher
from tests.helpers import processes_mentioning

ROOT = Path(__file__).resolve().parents[2]
SUMM = ROOT / "data" / "aclsum_summ" / "bin"  # `make data`'s; the demo makes its own vocabulary's copy


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    if not (SUMM / "dict.source.txt").exists():
        pytest.fail(f"{SUMM} missing: `make test` prepares it (scripts/prepare_summarization.py)")
    run = tmp_path_factory.mktemp("demo") / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py"), "--small", "--run-dir", str(run)],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return run, proc.stdout


def demo_data(run: Path) -> tuple[Path, int]:
    """The binarized summarization data the demo fine-tuned on (its dictionary is the checkpoints')
    and the XSum preset's length limit in its vocabulary, as its summary.json records them."""
    summary = json.loads((run / "summary.json").read_text())
    return ROOT / summary["summarization_data"], summary["xsum_max_len_b"]


def demo_generation(run: Path) -> dict:
    """The decoding settings the demo generated its test summaries with: its preset's, with the
    overrides its summary.json records."""
    generation = json.loads((run / "summary.json").read_text())["generation"]
    return {**load_preset(generation["preset"]), **generation}


def trigram_repeats(tokens: list[str]) -> int:
    grams = [tuple(tokens[i : i + 3]) for i in range(len(tokens) - 2)]
    return len(grams) - len(set(grams))


def test_demo_pipeline(demo):
    run, out = demo
    for step in ("1/6 LDDL", "2/6 pretraining", "3/6 what pretraining learned", "4/6 fine-tuning",
                 "5/6 summarizing", "6/6 results"):
        assert step in out
    assert "two words masked by one <mask> (bart_ext.load(...).fill_mask, match_source_len=False" in out
    assert "    input   : " in out
    if len(os.sched_getaffinity(0)) >= 2:  # the two fine-tunings at once, each progress line under its label
        cores = len(os.sched_getaffinity(0))
        assert f"pretrained and from scratch, for 12 updates: side by side, {cores // 2} thread" in out
        assert "\n  pretrained   valid  update " in out and "\n  from scratch valid  update " in out
    assert list((run / "lddl" / "train").glob("shard-*.parquet"))
    pretrain_log = (run / "pretrain.log").read_text()
    assert "'optimizer': {'_name': 'nvlamb'" in pretrain_log and "'_name': 'bart_denoising'" in pretrain_log
    assert "'_name': 'bart_small_preln'" in pretrain_log
    # One fine-tuning started from the pretrained checkpoint (its position rows beyond the 64 pretrained
    # ones filled: bart_ext/positions.py), the other from random weights; both validation losses fell.
    assert f"Loaded checkpoint {run / 'pretrain' / 'checkpoint_filled.pt'}" in (run / "finetune.log").read_text()
    filled = torch.load(run / "pretrain" / "checkpoint_filled.pt", weights_only=False)["model"]
    last = torch.load(run / "pretrain" / "checkpoint_last.pt", weights_only=False)["model"]
    for key in ("encoder.embed_positions.weight", "decoder.embed_positions.weight"):
        assert torch.equal(filled[key][:66], last[key][:66])  # padding row + the 64 pretrained positions
        assert torch.allclose(filled[key][66:], last[key][34:66].mean(0).expand_as(filled[key][66:]))
    scratch_log = (run / "finetune_scratch.log").read_text()
    assert "Loaded checkpoint" not in scratch_log and "No existing checkpoint found" in scratch_log
    for log in ("finetune.log", "finetune_scratch.log"):
        valid = read_log(run / log).valid
        assert len(valid) >= 2 and valid[-1][1] < valid[0][1] - 0.1, (log, valid)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("rouge", "rouge_scratch", "rouge_lead1", "rouge_lead3"):
        assert set(summary[key]) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}, key
        assert all(math.isfinite(v["mean"]) and v["low"] <= v["mean"] <= v["high"] for v in summary[key].values())
    assert 20 < summary["rouge_lead3"]["rouge1"]["mean"] < 60  # lead-3 is scored on real text
    assert 1 <= summary["distinct_summaries"] <= 100 and summary["seconds"] > 0
    assert summary["position_fill"] == "tail-mean"
    assert summary["continued"] is False  # finished: nothing to continue, the record says so
    assert json.loads((run / "progress.json").read_text())["finished"] is True
    data, max_len_b = demo_data(run)  # the checkpoint's dictionary is the data's
    assert len(torch.load(run / "finetune" / "checkpoint_best.pt", weights_only=False)["model"][
        "encoder.embed_tokens.weight"]) == len((data / "dict.source.txt").read_text().splitlines()) + 5
    assert max_len_b >= 60
    generation = demo_generation(run)
    assert generation["preset"] in ("xsum", "cnn_dm") and generation["min_len"] <= generation["max_len_b"]
    # The copy baseline copies: it is right on most unmasked tokens and on (almost) no masked ones.
    assert summary["copy_unmasked_token_accuracy"] > 0.6 and summary["copy_masked_token_accuracy"] < 0.1
    assert 0 <= summary["masked_token_accuracy"] <= 1 and summary["masked_tokens"] > 100
    recon = json.loads((run / "reconstruction.json").read_text())
    assert len(recon["examples"]) == 2 and all(set(e) == {"noised", "reconstruction", "original"}
                                                for e in recon["examples"])
    assert all("<mask>" in e["noised"] and "<mask>" not in e["original"] for e in recon["examples"])
    rouge = json.loads((run / "generate" / "test.rouge.json").read_text())
    assert set(rouge) == {"rouge1", "rouge2", "rougeL", "rougeLsum"}
    assert all(math.isfinite(v["f1"]) and v["low"] <= v["f1"] <= v["high"] for v in rouge.values())
    assert rouge["rouge1"]["f1"] == summary["rouge"]["rouge1"]["mean"]
    hyps = (run / "generate" / "test.hyp").read_text().splitlines()
    refs = (run / "generate" / "test.ref").read_text().splitlines()
    assert len(hyps) == len(refs) == 100 and all(h.strip() for h in hyps)
    assert len((run / "generate_scratch" / "test.hyp").read_text().splitlines()) == 100
    import matplotlib.image

    img = matplotlib.image.imread(run / "demo.png")  # loss curves and the ROUGE bars: three panels
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 1500 and img[..., :3].std() > 0.05
    drawn = json.loads((run / "demo.json").read_text())
    assert drawn["ROUGE on the 100 test papers"] == {"lead-1": 3, "lead-3": 3, "from scratch": 3, "pretrained": 3}
    assert set(drawn["fine-tuning: aclsum summarization"]) >= {"pretrained (valid)", "from scratch (valid)"}


def test_an_interrupted_demo_continues_where_it_stopped(demo, tmp_path):
    """SIGTERM to the demo alone (`kill PID`, a scheduler's cancel) as the two fine-tunings start (side
    by side): both are stopped with it, none left running; then the same command again: the steps
    that finished are not redone, the interrupted ones are, and every figure equals the
    uninterrupted demo's. (Ctrl-C, which signals the whole group, takes the same path.)"""
    run, _ = demo
    again = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "scripts" / "demo.py"), "--small", "--run-dir", str(again)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    first = ""
    for line in proc.stdout:
        first += line
        if "fine-tuning on aclsum summarization (100 papers), pretrained and from scratch" in line:
            os.kill(proc.pid, signal.SIGTERM)  # the demo only: its fine-tunings hear nothing of it
            break
    first += proc.stdout.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGTERM, first[-3000:]
    assert "stopped by SIGTERM" in first and "the same command continues where this stopped" in first
    # before the fix, SIGTERM ended the demo on the spot and both fine-tunings trained on as orphans
    assert processes_mentioning(str(again)) == []
    saved = json.loads((again / "progress.json").read_text())
    assert saved["done"] == ["lddl", "pretrain"] and saved["seconds"] > 0
    proc2 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc2.returncode == 0, proc2.stdout[-3000:] + proc2.stderr[-3000:]
    second = proc2.stdout
    assert "continuing the interrupted demo" in second and second.count("done in the interrupted run") == 2
    assert "pretrained and from scratch, for" in second
    assert "No existing checkpoint found" in (again / "finetune_scratch.log").read_text()
    assert "Loaded checkpoint" in (again / "finetune.log").read_text()
    assert json.loads((again / "progress.json").read_text())["finished"] is True
    expected, got = (json.loads((r / "summary.json").read_text()) for r in (run, again))
    for key in ("rouge", "rouge_scratch", "rouge_lead1", "rouge_lead3", "distinct_summaries",
                "masked_token_accuracy", "unmasked_token_accuracy"):
        assert got[key] == expected[key], key
    assert got["continued"] is True and got["seconds"] > saved["seconds"]
    for out in ("generate", "generate_scratch"):
        assert (again / out / "test.hyp").read_text() == (run / out / "test.hyp").read_text()
    # the same command once more: the finished demo's results again, nothing run or removed
    mtime = (again / "summary.json").stat().st_mtime
    proc3 = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc3.returncode == 0, proc3.stdout[-3000:] + proc3.stderr[-3000:]
    assert "has finished with these settings and this code" in proc3.stdout and "=== 1/" not in proc3.stdout
    pretrained = got["rouge"]["rouge1"]
    assert f"  pretrained    {pretrained['mean']:7.2f} [{pretrained['low']:5.2f},{pretrained['high']:6.2f}]" in proc3.stdout
    assert (again / "summary.json").stat().st_mtime == mtime and (again / "pretrain" / "checkpoint_last.pt").exists()


def generate_cli(run: Path, preset: str, subset: str, out: Path, mode: str = "bart_ext") -> dict:
    env = dict(os.environ, BART_EXT_NGRAM_BLOCK=mode)
    proc = launcher.run(
        [sys.executable, str(ROOT / "scripts" / "generate.py"), str(demo_data(run)[0]), "--preset", preset, "--path",
         str(run / "finetune" / "checkpoint_best.pt"), "--gen-subset", subset, "--results-path", str(out),
         "--quiet", "--", "--cpu"], env, ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return read_generate_output(out / f"generate-{subset}.txt")


@pytest.mark.parametrize("preset", ["xsum", "cnn_dm"])
def test_presets_through_fairseq_generate(demo, preset, tmp_path):
    run, _ = demo
    demo_preset = preset == demo_generation(run)["preset"]
    if demo_preset:  # the demo generated the test split with it already, with its own lengths
        rows = read_generate_output(run / "generate" / "generate-test.txt")
        settings = demo_generation(run)
    else:
        rows = generate_cli(run, preset, "valid", tmp_path)
        settings = load_preset(preset)
    assert len(rows) == (100 if demo_preset else 50)
    for idx, row in rows.items():
        hyp, scores = row["H"], row["P"]
        # fairseq scores every token of <s> ... </s> but prints H without <s> and </s> (wherever they
        # occur); the in-process test below checks the token ids themselves.
        assert len(scores) >= len(hyp) + 2, (idx, len(scores), len(hyp))
        eos_step = len(scores) - 1  # <s> is step 0
        assert settings["min_len"] <= eos_step <= settings["max_len_b"], (idx, eos_step)
        if len(scores) == len(hyp) + 2:  # no <s> inside, so H is the token sequence
            assert trigram_repeats(hyp) == 0, (idx, hyp)


def test_fairseq_generate_as_typed_summarizes_every_document(demo, cli_env, tmp_path):
    """Plain fairseq-generate, with fairseq's --required-batch-size-multiple 8: stock fairseq drops a
    last batch that is not a multiple of 8 from the output (fairseq #5036), here 2 of the 50."""
    run, _ = demo
    data, _ = demo_data(run)
    out = tmp_path / "gen"
    proc = launcher.run(
        ["fairseq-generate", str(data), "--user-dir", str(ROOT / "user_dir"), "--task",
         "bart_summarization", "--path", str(run / "finetune" / "checkpoint_best.pt"), "--gen-subset", "valid",
         "--batch-size", "16", "--beam", "1", "--max-len-b", "8", "--cpu", "--results-path", str(out)],
        cli_env, ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = read_generate_output(out / "generate-valid.txt")
    assert sorted(rows) == list(range(50)) and all("H" in row for row in rows.values())
    assert 50 % 16 % 8  # the last batch (2 documents) is not a multiple of 8


def _generate_in_process(ckpt: Path, data: Path, preset: str, subset: str, limit: int = 24):
    """fairseq-generate's own steps (options, task, model, generator, inference_step) on `limit` documents:
    (best hypothesis' tokens per document, the dictionary, the generator the task built)."""
    from fairseq import checkpoint_utils, options, tasks, utils
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    from bart_ext.summarization_data import preset_args

    parser = options.get_generation_parser()
    args = options.parse_args_and_arch(parser, [str(data), "--user-dir", str(ROOT / "user_dir"), "--task",
                                                "bart_summarization", "--path", str(ckpt), "--cpu",
                                                *preset_args(preset)])
    cfg = convert_namespace_to_omegaconf(args)
    utils.import_user_module(cfg.common)
    task = tasks.setup_task(cfg.task)
    models, saved = checkpoint_utils.load_model_ensemble([str(ckpt)], task=task)
    task.load_dataset(subset, task_cfg=saved.task)
    generator = task.build_generator(models, cfg.generation)
    ds = task.dataset(subset)
    out = []
    for start in range(0, limit, 12):
        sample = ds.collater([ds[i] for i in range(start, start + 12)])
        with torch.no_grad():
            hyps = task.inference_step(generator, models, sample)
        out += [h[0]["tokens"].tolist() for h in hyps]
    return out, task.target_dictionary, generator


def test_blocking_and_beam_search_equal_fairseqs_and_bos_first(demo):
    from bart_ext.adapters import fairseq_patches
    from bart_ext.switches import NGRAM_BLOCK

    run, _ = demo
    ckpt, data = run / "finetune" / "checkpoint_best.pt", demo_data(run)[0]
    results, generators = {}, {}
    try:
        for mode in NGRAM_BLOCK.choices:
            fairseq_patches.install_ngram_block(mode)
            results[mode], dictionary, generators[mode] = _generate_in_process(ckpt, data, "xsum", "valid")
    finally:
        fairseq_patches.install_ngram_block("bart_ext")
    assert results["bart_ext"] == results["fairseq_loop"]
    # bart_ext's beam search (built by the task) against fairseq's SequenceGenerator, on the trained model.
    assert isinstance(generators["bart_ext"], BeamSequenceGenerator)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BART_EXT_GENERATOR", "fairseq")
        fairseq_tokens, _, fairseq_generator = _generate_in_process(ckpt, data, "xsum", "valid")
    assert type(fairseq_generator).__name__ == "SequenceGenerator"
    assert fairseq_tokens == results["bart_ext"]
    for tokens in results["bart_ext"]:
        assert tokens[0] == dictionary.bos() and tokens[-1] == dictionary.eos()
        assert trigram_repeats([str(t) for t in tokens]) == 0
    # fairseq as shipped blocks nothing on a CPU (issue #5206): this model then repeats itself.
    assert sum(trigram_repeats([str(t) for t in tokens]) for tokens in results["fairseq_stock"]) > 0
    # The CNN-DM preset's long outputs (55 to 140 tokens), on the token ids themselves.
    for tokens in _generate_in_process(ckpt, data, "cnn_dm", "valid", limit=12)[0]:
        assert tokens[0] == dictionary.bos() and 55 <= len(tokens) - 1 <= 140
        assert trigram_repeats([str(t) for t in tokens]) == 0


def test_python_api_generates_what_fairseq_generate_wrote(demo):
    """bart_ext.load(...).generate with the demo's decoding settings on the test sources gives
    fairseq-generate's hypotheses; decode gives the demo's summaries; summarize takes raw text."""
    import bart_ext

    run, _ = demo
    data, _ = demo_data(run)
    model = bart_ext.load(run / "finetune" / "checkpoint_best.pt")  # the checkpoint's own task.data
    assert Path(model.cfg.task.data).resolve() == data.resolve()
    model.task.load_dataset("test")
    dataset = model.task.dataset("test")
    n = 8
    settings = {k: v for k, v in demo_generation(run).items() if k != "preset"}
    hypos = model.generate([dataset[i]["source"] for i in range(n)], **settings)
    written = read_generate_output(run / "generate" / "generate-test.txt")
    strip = ("<s>", "</s>")
    for i in range(n):
        ours = [model.dictionary[t] for t in hypos[i][0]["tokens"]]
        assert [t for t in ours if t not in strip] == [t for t in written[i]["H"] if t not in strip], i
    summaries = (run / "generate" / "test.hyp").read_text().splitlines()
    assert [model.decode(h[0]["tokens"]) for h in hypos] == summaries[:n]
    out = model.summarize(["We propose a new method for parsing. It is fast and accurate on three treebanks."])
    assert len(out) == 1 and isinstance(out[0], str)


def test_python_api_names_a_data_folder_that_is_gone(demo, tmp_path):
    """A checkpoint carried to another machine (its task.data not there): bart_ext.load says which folder
    it was trained with and how to give it one, where fairseq's task named a dict.source.txt; with data=
    it summarizes as at home."""
    import bart_ext

    run, _ = demo
    data, _ = demo_data(run)
    state = torch.load(run / "finetune" / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    state["cfg"]["task"]["data"] = str(tmp_path / "elsewhere" / "bin")
    moved = tmp_path / "checkpoint_best.pt"
    torch.save(state, moved)
    with pytest.raises(FileNotFoundError, match=rf"^{moved} was trained with task.data={tmp_path}/elsewhere/bin, "
                                                r"which is not there: pass bart_ext.load\(\.\.\., data=FOLDER\)"):
        bart_ext.load(moved)
    text = ["We propose a new method for parsing. It is fast and accurate on three treebanks."]
    home = bart_ext.load(run / "finetune" / "checkpoint_best.pt").summarize(text)
    assert bart_ext.load(moved, data=data).summarize(text) == home


def test_fairseqs_from_pretrained_reads_text_as_the_model_was_trained(demo, cli_env, tmp_path):
    """fairseq's own Python API as its BART README spells it, BARTModel.from_pretrained, on the demo's
    summarizer: the data folder's BPE files (fairseq's download addresses stopped it offline, and are
    another tokenizer than the demo's 4,000-merge BPE) and the space before the first word that our data
    gives every text. encode, sample and fill_mask equal bart_ext.load's; fairseq's released-BART
    tokenization made the demo's model begin a summary of a terminology paper with " Aachine"."""
    import bart_ext
    from fairseq.data.encoders.gpt2_bpe import GPT2BPE
    from fairseq.models.bart import BARTHubInterface, BARTModel

    from bart_ext.adapters.fairseq_hub import BartExtHubInterface

    run, _ = demo
    data, _ = demo_data(run)
    ckpt = run / "finetune" / "checkpoint_best.pt"
    ours = bart_ext.load(ckpt)  # imports the plugin, as `import user_dir` or from_pretrained(user_dir=...) do

    def hub(**kwargs):
        return BARTModel.from_pretrained(str(ckpt.parent), checkpoint_file=ckpt.name, data_name_or_path=str(data),
                                         **kwargs)

    bart = hub()
    assert isinstance(bart, BartExtHubInterface) and isinstance(bart, BARTHubInterface)
    assert (bart.cfg.bpe._name, bart.cfg.bpe.gpt2_encoder_json) == ("bart_gpt2", str(data / "encoder.json"))
    text = "Handling terminology is an important matter in a translation workflow. We propose tools for it."
    assert bart.encode(text).tolist() == ours.encode(text).tolist()
    settings = dict(beam=2, max_len_b=12, min_len=2, no_repeat_ngram_size=3)
    summary = ours.sample([text], **settings)
    assert bart.sample([text], **settings) == summary and not summary[0].startswith(" ")
    # the text after a <mask> as written: "(<mask>)" is not " )"
    for masked in ("Handling terminology is an <mask> in translation.", "<mask> is an important matter (<mask>)."):
        assert [t for t, _ in bart.fill_mask([masked], topk=2)[0]] == [t for t, _ in ours.fill_mask(masked, topk=2)]

    # every decoder layer's states (fairseq's README: extract_features(tokens, return_all_hiddens=True)); they
    # were None, which fairseq's hub stopped on; the last one before the Pre-LN model's final LayerNorm
    tokens = bart.encode(text)
    with torch.no_grad():
        layers, features = bart.extract_features(tokens, return_all_hiddens=True), bart.extract_features(tokens)
        assert len(layers) == len(bart.model.decoder.layers) + 1 and layers[0].shape == features.shape
        assert torch.allclose(bart.model.decoder.layer_norm(layers[-1]), features, atol=1e-6)

    plain = hub(prefix_space=False)  # a model fine-tuned on data binarized with fairseq's own tools
    assert type(plain.bpe) is GPT2BPE
    assert plain.encode(text).tolist() == bart_ext.load(ckpt, prefix_space=False).encode(text).tolist() != \
        ours.encode(text).tolist()
    with pytest.raises(ValueError, match=r"from_pretrained\(prefix_space='no'\): expected True, False or None"):
        hub(prefix_space="no")

    # in a fresh process that imports the plugin through from_pretrained's user_dir= only
    script = tmp_path / "hub.py"
    script.write_text("import sys\nfrom fairseq.models.bart import BARTModel\n"
                      "bart = BARTModel.from_pretrained(*sys.argv[1:4], user_dir=sys.argv[4])\n"
                      "print(type(bart).__name__)\n"
                      "print(bart.sample([sys.argv[5]], beam=2, max_len_b=12, min_len=2, no_repeat_ngram_size=3)[0])\n")
    proc = launcher.run([sys.executable, str(script), str(ckpt.parent), ckpt.name, str(data), str(ROOT / "user_dir"),
                         text], cli_env, tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines()[-2:] == ["BartExtHubInterface", summary[0]], proc.stdout[-2000:]


def test_fairseqs_hub_and_interactive_fill_masks_with_the_pretrained_model(demo, cli_env, tmp_path):
    """fairseq's BART README fills masks with a pretrained model: BARTModel.from_pretrained(...).fill_mask on
    the demo's pretrained checkpoint (task bart_denoising) stopped with NotImplementedError (the task built
    no inference dataset). It now equals bart_ext.load's, as sample does; fairseq-interactive --bpe bart_gpt2
    gives the model "<mask>" as the mask symbol."""
    import bart_ext
    from fairseq.models.bart import BARTModel

    run, _ = demo
    ckpt, data = run / "pretrain" / "checkpoint_last.pt", run / "lddl"
    texts = ["Handling terminology is an important <mask> in machine translation.", "<mask> is a task (<mask>)."]
    hub = BARTModel.from_pretrained(str(ckpt.parent), checkpoint_file=ckpt.name, data_name_or_path=str(data))
    ours = bart_ext.load(ckpt, data=data)
    filled = hub.fill_mask(texts, topk=3)
    assert filled == ours.fill_mask(texts, topk=3) and len(filled[0]) == 3
    assert hub.sample(["We propose a new method for parsing."]) == ours.sample(["We propose a new method for parsing."])

    lines = tmp_path / "masked.txt"
    lines.write_text(texts[0] + "\n")
    proc = launcher.run(["fairseq-interactive", str(data), "--user-dir", str(ROOT / "user_dir"), "--task",
                         "bart_denoising", "--path", str(ckpt), "--cpu", "--beam", "3", "--match-source-len",
                         "--bpe", "bart_gpt2", "--gpt2-encoder-json", str(data / "encoder.json"), "--gpt2-vocab-bpe",
                         str(data / "vocab.bpe"), "--input", str(lines)], cli_env, ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    source = [x for x in proc.stdout.splitlines() if x.startswith("S-0")][0].split("\t")[1].split()
    assert source.count("<mask>") == 1, source  # one symbol, not the characters < mask >
    text = [x for x in proc.stdout.splitlines() if x.startswith("D-0")][0].split("\t")[2]
    assert text and "<mask>" not in text, text


def test_rouge_in_validation_and_in_fairseq_generate(demo, cli_env, tmp_path):
    """--eval-rouge: two updates of fine-tuning from the demo's summarizer log the validation split's ROUGE
    and keep checkpoint_best by rougeL; fairseq-generate --scoring bart_rouge on that checkpoint with the
    same settings prints the same figures, which are the ROUGE of hypotheses and references decoded from
    their ids here, independently of fairseq's BPE. Without --bpe the scorer refuses the ids it is given."""
    from bart_ext.bpe import FolderCodec
    from bart_ext.rouge import per_document

    run, _ = demo
    data, _ = demo_data(run)
    start = run / "finetune" / "checkpoint_best.pt"
    cfg = torch.load(start, map_location="cpu", weights_only=False)["cfg"]
    save = tmp_path / "ft"
    settings = {"beam": 2, "max_len_b": 12, "min_len": 3, "no_repeat_ngram_size": 2}
    proc = launcher.run(
        ["fairseq-train", str(data), "--user-dir", str(ROOT / "user_dir"), "--task", "bart_summarization",
         "--arch", cfg["model"]["_name"], "--truncate-source", "--max-source-positions",
         str(cfg["task"]["max_source_positions"]), "--criterion", "bart_label_smoothed_cross_entropy",
         "--label-smoothing", "0.1", "--optimizer", "bart_adam", "--lr", "1e-4", "--max-tokens", "4096",
         "--max-update", "2", "--cpu", "--finetune-from-model", str(start), "--save-dir", str(save),
         "--no-epoch-checkpoints", "--eval-rouge", "--eval-rouge-args", json.dumps(settings),
         "--eval-rouge-print-samples", "--best-checkpoint-metric", "rougeL", "--maximize-best-checkpoint-metric",
         "--log-format", "json", "--num-workers", "0"],
        cli_env, ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    valid = [json.loads(line[line.index("{"):]) for line in log.splitlines() if "valid_rouge1" in line]
    assert len(valid) == 1, log[-3000:]
    logged = {m: float(valid[0][f"valid_{m}"]) for m in ("rouge1", "rouge2", "rougeL")}
    assert "example summary: " in log and "example reference: " in log
    best = torch.load(save / "checkpoint_best.pt", map_location="cpu", weights_only=False)
    assert best["extra_state"]["best"] == pytest.approx(logged["rougeL"])
    validate = ["fairseq-validate", str(data), "--user-dir", str(ROOT / "user_dir"), "--task", "bart_summarization",
                "--path", str(save / "checkpoint_best.pt"), "--valid-subset", "valid", "--max-tokens", "4096", "--cpu",
                "--num-workers", "0"]
    torchrun = [os.path.join(os.path.dirname(sys.executable), "torchrun"), "--nproc-per-node", "2", "--master-port",
                "29591", os.path.join(os.path.dirname(sys.executable), "fairseq-validate")]
    # one process, and two ranks (each validates half the documents; fairseq's all_gather_list, which
    # stopped on a CPU job with "torch.cuda.ByteTensor not available", gathers their sums)
    for cmd in (validate, torchrun + validate[1:]):
        proc = launcher.run(cmd, cli_env, ROOT, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        line = [x for x in (proc.stdout + proc.stderr).splitlines() if "valid on 'valid' subset" in x][-1]
        assert "| bsz 50" in line, line  # every validation document, on either count of ranks
        assert all(f"| {m} {logged[m]:g} |" in line for m in logged), (cmd[0], line, logged)  # the checkpoint's --eval-rouge

    generate = ["fairseq-generate", str(data), "--user-dir", str(ROOT / "user_dir"), "--task", "bart_summarization",
                "--path", str(save / "checkpoint_best.pt"), "--gen-subset", "valid", "--batch-size", "16", "--cpu",
                "--scoring", "bart_rouge", *(a for k, v in settings.items() for a in (f"--{k.replace('_', '-')}", str(v)))]
    bpe = ["--bpe", "bart_gpt2", "--gpt2-encoder-json", str(data / "encoder.json"), "--gpt2-vocab-bpe",
           str(data / "vocab.bpe")]
    proc = launcher.run(generate + bpe + ["--results-path", str(tmp_path / "gen")], cli_env, ROOT, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "BLEU score" not in proc.stderr  # fairseq's warning about BLEU on BPE tokens is not about this scorer
    text = (tmp_path / "gen" / "generate-valid.txt").read_text()
    printed = text.strip().splitlines()[-1]
    assert printed.startswith("Generate valid with beam=2: ROUGE-1 ") and printed.endswith(" 50 documents)"), printed
    figures = [float(printed.split(f"{name} ")[1].split(" ")[0]) for name in ("ROUGE-1", "ROUGE-2", "ROUGE-L")]
    assert figures == [pytest.approx(logged[m], abs=0.006) for m in ("rouge1", "rouge2", "rougeL")], (printed, logged)

    # hypotheses from the ids fairseq-generate wrote, references from the binarized data
    from fairseq.data import Dictionary
    from fairseq.data.indexed_dataset import MMapIndexedDataset

    codec, d = FolderCodec(data), Dictionary.load(str(data / "dict.target.txt"))
    targets = MMapIndexedDataset(str(data / "valid.source-target.target"))
    hyp_ids = {int(line.split("\t")[0][2:]): line.split("\t")[2].split() for line in text.splitlines()
               if line.startswith("H-")}
    assert sorted(hyp_ids) == list(range(50))
    hyps = [codec.text(hyp_ids[i]) for i in range(50)]
    refs = [codec.decode(d, targets[i]) for i in range(50)]
    scores = per_document(hyps, refs)
    assert figures == [pytest.approx(100 * scores[m].mean(), abs=0.006) for m in ("rouge1", "rouge2", "rougeL")]
    assert 0 < figures[0] < 100

    proc = launcher.run(generate, cli_env, ROOT, timeout=300)  # ids only: refused, naming the options that decode
    assert proc.returncode != 0 and "--scoring bart_rouge scores text" in proc.stderr, proc.stderr[-3000:]
    assert "--bpe bart_gpt2 --gpt2-encoder-json DATA/encoder.json" in proc.stderr


def test_training_refuses_to_cut_sources_beyond_the_models_positions(cli_env, tmp_path):
    """--truncate-source with --max-source-positions above the model's (the xsum config's 1024 on a 512-position
    bart_small_preln): fairseq skipped every aclsum training paper with a warning and then failed with
    "IndexError: list index out of range". Training now stops before it starts, saying what to set."""
    out = launcher.run(["fairseq-train", str(SUMM), "--user-dir", str(ROOT / "user_dir"),
                        "--task", "bart_summarization", "--arch", "bart_small_preln", "--truncate-source",
                        "--max-source-positions", "1024", "--criterion", "bart_label_smoothed_cross_entropy",
                        "--optimizer", "adam", "--lr", "1e-4", "--max-tokens", "2048", "--max-update", "1", "--cpu",
                        "--save-dir", str(tmp_path / "ft")], cli_env, ROOT, timeout=600)
    assert out.returncode != 0
    assert ("ValueError: --truncate-source cuts sources to --max-source-positions 1024 (task.max_source_positions), "
            "but the model has 512 source positions: set it to 512 or fewer") in out.stderr, out.stderr[-2000:]
    assert not list((tmp_path / "ft").glob("*.pt"))


def test_a_sentencepiece_model_summarizes_as_text(cli_env, tmp_path):
    """The sentencepiece path end to end (lddl_preprocess.py and prepare_summarization.py take
    --sentencepiece-model): scripts/generate.py and bart_ext.load read only GPT-2 files and stopped on the
    missing encoder.json after training. prepare_summarization.py now leaves the model beside the data,
    and both decode through it (bart_ext.bpe.FolderCodec)."""
    import bart_ext

    from tests.helpers import sentencepiece_model

    src = ROOT / "data" / "aclsum_summ" / "raw"
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, n in (("train", 40), ("valid", 6), ("test", 6)):
        for side in ("source", "target"):
            lines = (src / f"{split}.{side}").read_text(encoding="utf-8").splitlines()[:n]
            (raw / f"{split}.{side}").write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    sp = sentencepiece_model(raw / "train.source", tmp_path, 600)

    def script(*args):
        cmd = list(map(str, args)) if args[0] == "fairseq-train" else [sys.executable, *map(str, args)]
        proc = launcher.run(cmd, cli_env, ROOT, timeout=600)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
        return proc.stdout

    out = tmp_path / "data"
    script(ROOT / "scripts" / "prepare_summarization.py", "--raw", raw, "--out", out, "--sentencepiece-model",
           tmp_path / "sp.model", "--dict", tmp_path / "dict.txt")
    data = out / "bin"
    assert (data / "sentencepiece.model").read_bytes() == (tmp_path / "sp.model").read_bytes()
    script("fairseq-train", data, "--user-dir", ROOT / "user_dir", "--task", "bart_summarization", "--arch",
           "bart_tiny_preln", "--truncate-source", "--max-source-positions", "256", "--criterion",
           "bart_label_smoothed_cross_entropy", "--optimizer", "adam", "--lr", "1e-3", "--max-tokens", "2048",
           "--max-update", "3", "--cpu", "--save-dir", tmp_path / "ft", "--no-epoch-checkpoints")
    ckpt = tmp_path / "ft" / "checkpoint_last.pt"
    printed = script(ROOT / "scripts" / "generate.py", "--preset", "xsum", data, "--path", ckpt, "--rouge", "--quiet",
                     "--", "--max-len-b", "12", "--min-len", "2")
    assert "rouge1" in printed
    refs = (ckpt.parent / "generate-xsum" / "test.ref").read_text(encoding="utf-8").splitlines()
    targets = (raw / "test.target").read_text(encoding="utf-8").splitlines()
    # a character the sentencepiece model never saw is <unk> (fairseq writes <<unk>>); the other lines come back
    same = [(" ".join(r.split()), " ".join(sp.decode(sp.encode(t)).split())) for r, t in zip(refs, targets) if "unk>" not in r]
    assert len(refs) == 6 and len(same) >= 4 and all(a == b for a, b in same), same
    hyps = (ckpt.parent / "generate-xsum" / "test.hyp").read_text(encoding="utf-8").splitlines()
    assert len(hyps) == 6 and all(h.strip() and not h.replace(" ", "").isdigit() for h in hyps), hyps

    model = bart_ext.load(ckpt)
    assert model.codec.kind == "sentencepiece" and model.bpe is None
    text = targets[0]
    tokens = model.encode(text)
    assert model.dictionary.unk() not in tokens.tolist()
    assert model.decode(tokens) == sp.decode(sp.encode(text))
    summary = model.summarize((raw / "test.source").read_text(encoding="utf-8").splitlines()[0], max_len_b=12, min_len=2)
    assert isinstance(summary, str) and summary.strip()
    # the transformers and CTranslate2 exports write GPT-2 tokenizers: refused, saying why, nothing written
    for command in ("to-hf", "to-ct2"):
        proc = launcher.run([sys.executable, str(ROOT / "scripts" / "convert.py"), command, str(ckpt),
                             str(tmp_path / command)], cli_env, ROOT, timeout=600)
        assert proc.returncode != 0 and proc.stderr.strip().splitlines()[-1] == (
            f"convert.py {command}: {data}: the model's data is sentencepiece-encoded (sentencepiece.model), and the "
            "export writes GPT-2 byte-level BPE tokenizers only"), proc.stderr[-2000:]
        assert not (tmp_path / command).exists()
