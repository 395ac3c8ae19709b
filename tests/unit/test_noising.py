"""BART denoising noise: statistics on real text, agreement with fairseq, modes, edge cases, determinism."""
from __future__ import annotations

import hashlib
import math
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import stats

from scripts.fairseq_reference import fairseq_reference
from bart_ext.denoising_data import DenoisingSamples, pack_blocks
from bart_ext.noising import NoiseConfig, Specials, noise
from tests.conftest import ROOT
from tests.helpers import denoising_task

N = 1200  # samples for the statistics


@pytest.fixture(scope="module")
def train(data_dir):
    task = denoising_task(data_dir / "bin", tokens_per_sample=512)
    return task, task.load_dataset("train").samples


def draws(samples, cfg=None, n=N, epoch=1):
    if cfg is not None:
        samples.cfg = cfg
    try:
        return [samples.noised(i, epoch) for i in range(n)]
    finally:
        samples.cfg = NoiseConfig()


def test_span_lengths_spend_exactly_the_budget_and_follow_poisson(train):
    _, samples = train
    out = draws(samples)
    lengths = []
    for o in out:
        budget = math.ceil(0.3 * o.num_words)
        assert o.spans.sum() == budget
        # Spans near the budget are biased by the stopping rule (the last is cut, the ones
        # before it lean short). Selecting spans on the budget left *before* them uses
        # only earlier draws, so the selected lengths are still i.i.d. Poisson.
        before = np.cumsum(o.spans) - o.spans
        lengths.extend(o.spans[before <= budget - 25].tolist())
    lengths = np.asarray(lengths)
    # Chi-square goodness of fit to Poisson(3.5), bins 0..9 and >= 10.
    observed = np.array([(lengths == k).sum() for k in range(10)] + [(lengths >= 10).sum()])
    pmf = stats.poisson.pmf(np.arange(10), 3.5)
    expected = np.append(pmf, 1 - pmf.sum()) * len(lengths)
    p = stats.chisquare(observed, expected).pvalue
    assert len(lengths) > 5000 and p > 0.01, (p, observed, expected.round())


def test_random_token_share_of_masks(train):
    task, samples = train
    out = draws(samples)
    masks = sum(int((o.source == task.mask_idx).sum()) for o in out)
    random = sum(o.num_random for o in out)
    share = random / (masks + random)
    assert abs(share - 0.10) <= 0.02, share


def _sentences(tokens, lengths, order):
    starts = np.cumsum(lengths) - lengths
    return [tuple(tokens[starts[j]: starts[j] + lengths[j]]) for j in order]


@pytest.mark.parametrize("ratio", [1.0, 0.5])
def test_sentence_permutation_keeps_sentences_and_shuffles_the_share(train, ratio):
    _, samples = train
    cfg = NoiseConfig(mask=0.0, permute_sentences=ratio)
    changed, displaced, counted = 0, [], 0
    for i, o in enumerate(draws(samples, cfg)):
        tokens, lengths = samples.clean(i)
        body = o.source[1:-1]
        expected = np.concatenate([np.asarray(s, dtype=np.int64) for s in _sentences(tokens, lengths, o.order)])
        assert np.array_equal(body, expected), "the source must be the sentences laid out in `order`"
        assert sorted(_sentences(tokens, lengths, o.order)) == sorted(_sentences(tokens, lengths, range(len(lengths))))
        moved = int((o.order != np.arange(len(o.order))).sum())
        assert moved <= math.ceil(ratio * len(lengths))
        if len(lengths) >= 3:
            counted += 1
            changed += moved > 0
            displaced.append(moved / len(lengths))
    assert counted > 500
    if ratio == 1.0:
        assert changed / counted >= 0.90, changed / counted
    else:
        assert 0.30 <= np.mean(displaced) <= 0.55, np.mean(displaced)


def test_agreement_with_fairseq_denoising_dataset(train):
    """Same tokens, word starts and settings as fairseq's DenoisingDataset: statistics within 2%."""
    task, samples = train
    results = {}
    for mask_random in (0.0, 0.1):
        cfg = NoiseConfig(mask_random=mask_random)
        ref = fairseq_reference(samples, task.dictionary, task.mask_idx, cfg, seed=1)
        sp = samples.specials
        ours_stats, ref_stats = [], []
        for i in range(N):
            tokens, lengths = samples.clean(i)
            # fairseq sees only the dictionary's word starts: give ours exactly the same.
            o = noise(tokens, lengths, samples.word_start[tokens], cfg, sp, np.random.default_rng([1, 1, i]))
            r = ref[i]["source"].numpy()
            n = len(tokens)
            for src, acc in ((o.source, ours_stats), (r, ref_stats)):
                masks = int((src == task.mask_idx).sum())
                acc.append((len(src), masks, n))
        o_len, o_masks, n_tok = map(np.array, zip(*ours_stats))
        r_len, r_masks, _ = map(np.array, zip(*ref_stats))
        results[mask_random] = dict(ours_len=o_len.mean(), ref_len=r_len.mean(), ours_masks=o_masks.mean(),
                                    ref_masks=r_masks.mean())
        assert o_len.mean() == pytest.approx(r_len.mean(), rel=0.02)
        assert o_masks.mean() == pytest.approx(r_masks.mean(), rel=0.02)
        if mask_random == 0.0:
            # masked share: original tokens that did not survive (replace_length 1: each span -> one <mask>)
            ours_share = ((n_tok + 2 - (o_len - o_masks) - 2) / n_tok).mean()
            ref_share = ((n_tok + 2 - (r_len - r_masks) - 2) / n_tok).mean()
            assert ours_share == pytest.approx(ref_share, rel=0.02)
            assert 0.20 < ours_share < 0.30  # overlapping spans: under the 0.3 budget
            print(f"masked token share: ours {ours_share:.4f}, fairseq {ref_share:.4f}")
    print(results)


@pytest.mark.parametrize("replace_length", [1, 0, -1])
def test_replace_length_modes(train, replace_length):
    task, samples = train
    cfg = NoiseConfig(permute_sentences=0.0, mask_random=0.0, replace_length=replace_length)
    for o in draws(samples, cfg, n=200):
        src, tgt = o.source, o.target
        masks = int((src == task.mask_idx).sum())
        inserts = int((o.spans == 0).sum())
        kept = src[src != task.mask_idx]
        if replace_length == -1:
            assert len(src) == len(tgt) + inserts  # every masked token stays, as a <mask>
        else:
            # the unmasked tokens are the clean text with the spans cut out, in order
            it = iter(tgt.tolist())
            assert all(tok in it for tok in kept.tolist())
        if replace_length == 0:
            assert masks == inserts and len(src) < len(tgt)
        if replace_length == 1:
            spans = int((o.spans > 0).sum())
            assert inserts < masks + 1 and masks <= spans + inserts


def _synthetic(lines: list[list[int]], max_tokens: int, cfg=NoiseConfig()):
    """DenoisingSamples over literal lines (each gets its </s>=2); [] is a blank line."""
    raw = [np.array(line + [2], dtype=np.int64) for line in lines]
    flat = np.concatenate(raw)
    offsets = np.cumsum([0] + [len(r) for r in raw])
    table = np.zeros(40, dtype=bool)
    table[::2] = True  # even ids begin words
    sp = Specials(bos=0, eos=2, mask=39, size=40, first_regular=4)
    return DenoisingSamples(lambda lo, hi: flat[offsets[lo]: offsets[hi]], np.array([len(r) for r in raw]),
                            max_tokens, table, sp, cfg, seed=3)


def _check_invariants(samples: DenoisingSamples):
    for i in range(len(samples)):
        for epoch in (1, 2):
            o = samples.noised(i, epoch)
            assert o.source[0] == 0 and o.source[-1] == 2 and o.target[0] == 0 and o.target[-1] == 2
            assert not np.isin(o.source[1:-1], [0, 1, 2]).any(), "no <s>, <pad>, </s> inside"
            assert o.spans.sum() == math.ceil(0.3 * o.num_words)
            assert len(o.target) - 2 <= 10


def test_edge_cases_keep_the_invariants():
    lines = [
        [10, 11, 12],           # a one-sentence document
        [],
        [14],                   # a one-word sentence
        [16, 17, 18, 20],
        [], [],                 # empty lines
        list(range(4, 38)),     # a document longer than a sample
        [],
        [3, 3, 3],              # <unk> only: special tokens
    ]
    samples = _synthetic(lines, max_tokens=10)
    assert (samples.blocks[:, 3] - samples.blocks[:, 2]).max() <= 10
    _check_invariants(samples)
    sizes = (samples.blocks[:, 3] - samples.blocks[:, 2]).tolist()
    assert sum(sizes) == sum(len(line) for line in lines), "every token lands in exactly one sample"
    for cfg in (NoiseConfig(replace_length=0), NoiseConfig(replace_length=-1), NoiseConfig(insert=0.2, rotate=1.0)):
        _check_invariants(_synthetic(lines, 10, cfg))


def test_pack_blocks_respects_documents_and_lengths():
    blocks = pack_blocks(np.array([3, 4, 0, 5, 6, 2, 0, 25]), max_tokens=10)
    assert blocks.tolist() == [[0, 2, 0, 7], [3, 4, 0, 5], [4, 6, 0, 8], [7, 8, 0, 10], [7, 8, 10, 20],
                               [7, 8, 20, 25]]


def _digest(data_bin, epoch: int, workers: int) -> str:
    task = denoising_task(data_bin, tokens_per_sample=128)
    ds = task.load_dataset("valid")
    itr = task.get_batch_iterator(ds, max_tokens=2048, seed=1, num_workers=workers, epoch=epoch)
    h = hashlib.sha256()
    for batch in sorted(itr.next_epoch_itr(shuffle=True), key=lambda b: int(b["id"].min())):
        for key in ("id", "target"):
            h.update(batch[key].numpy().tobytes())
        h.update(batch["net_input"]["src_tokens"].numpy().tobytes())
    return h.hexdigest()


def test_samples_depend_only_on_seed_epoch_and_index(data_dir):
    bin_dir = data_dir / "bin"
    single = _digest(bin_dir, 1, 0)
    assert _digest(bin_dir, 1, 2) == single, "worker count must not change the samples"
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from tests.unit.test_noising import _digest; "
            "from pathlib import Path; print(_digest(Path(sys.argv[2]), 1, 0))")
    other = subprocess.run([sys.executable, "-c", code, str(ROOT), str(bin_dir)], capture_output=True, text=True,
                           cwd=ROOT)
    assert other.stdout.strip().splitlines()[-1] == single, other.stderr[-2000:]
    assert _digest(bin_dir, 2, 0) != single, "another epoch must noise differently"


def test_noise_is_a_function_of_its_generator():
    cfg = NoiseConfig(insert=0.1, rotate=0.5)
    sp = Specials(bos=0, eos=2, mask=39, size=40, first_regular=4)
    tokens = np.arange(4, 34)
    ws = tokens % 3 == 0
    a = noise(tokens, np.array([10, 12, 8]), ws, cfg, sp, np.random.default_rng(5))
    b = noise(tokens, np.array([10, 12, 8]), ws, cfg, sp, np.random.default_rng(5))
    c = noise(tokens, np.array([10, 12, 8]), ws, cfg, sp, np.random.default_rng(6))
    assert np.array_equal(a.source, b.source) and not np.array_equal(a.source, c.source)
    torch.testing.assert_close(torch.from_numpy(a.target), torch.from_numpy(np.r_[0, tokens, 2]))


def test_bad_noise_settings_are_named():
    with pytest.raises(ValueError, match="replace_length"):
        NoiseConfig(replace_length=2)
    with pytest.raises(ValueError, match="`mask`"):
        replace(NoiseConfig(), mask=1.5)


def test_batches_follow_fairseqs_seq2seq_convention(train):
    task, samples = train
    ds = task.datasets["train"]
    batch = ds.collater([ds[i] for i in range(5)])
    d = task.dictionary
    src, tgt, prev = batch["net_input"]["src_tokens"], batch["target"], batch["net_input"]["prev_output_tokens"]
    for row in range(5):
        s = src[row][src[row] != d.pad()]
        t = tgt[row][tgt[row] != d.pad()]
        p = prev[row][: len(t)]
        assert s[0] == d.bos() and s[-1] == d.eos() and t[0] == d.bos() and t[-1] == d.eos()
        assert p[0] == d.eos() and torch.equal(p[1:], t[:-1]), "decoder input: target shifted right, </s> first"
        assert batch["net_input"]["src_lengths"][row] == len(s)
    assert batch["ntokens"] == int(tgt.ne(d.pad()).sum())


def test_word_start_tables(data_dir, tmp_path):
    from fairseq.data import Dictionary

    from bart_ext.adapters.fairseq_denoising import word_start_table

    d = Dictionary()
    for sym in ("\u2581the", "cat", "\u2581sat"):
        d.add_symbol(sym)
    assert word_start_table(d, "sentencepiece", None)[d.nspecial:].tolist() == [True, False, True]
    assert word_start_table(d, "token", None).all()

    g = Dictionary()
    for sym in ("464", "383", "11"):  # GPT-2 ids of "The", " The", ","
        g.add_symbol(sym)
    table = word_start_table(g, "gpt2", data_dir / "bin" / "encoder.json")
    assert table[g.nspecial:].tolist() == [False, True, False]
    with pytest.raises(FileNotFoundError, match="encoder.json"):
        word_start_table(g, "gpt2", tmp_path / "missing.json")


@pytest.mark.parametrize("permute", [0.0, 1.0])
def test_masked_flags_name_the_target_tokens_the_spans_covered(train, permute):
    task, samples = train
    cfg = NoiseConfig(permute_sentences=permute, mask_random=0.0, replace_length=-1)
    for o in draws(samples, cfg, n=100):
        assert o.masked.shape == o.target.shape and not o.masked[0] and not o.masked[-1]
        # one <mask> per covered token (plus the inserted ones): as many masks as flagged target
        # tokens, and every source token that is not a mask is a target token that is not flagged
        assert int(o.masked.sum()) + int((o.spans == 0).sum()) == int((o.source == task.mask_idx).sum())
        assert sorted(o.source[o.source != task.mask_idx].tolist()) == sorted(o.target[~o.masked].tolist())
    cfg = NoiseConfig(permute_sentences=0.0, mask_random=0.0, replace_length=1)
    for o in draws(samples, cfg, n=100):  # spans collapse: each run of flagged tokens keeps at least
        runs = int((o.masked[1:] & ~o.masked[:-1]).sum())  # its first span's <mask>, at most one per span
        span_masks = int((o.source == task.mask_idx).sum()) - int((o.spans == 0).sum())
        assert 1 <= runs <= span_masks <= int((o.spans > 0).sum())
        assert o.source[o.source != task.mask_idx].tolist() == o.target[~o.masked].tolist()
