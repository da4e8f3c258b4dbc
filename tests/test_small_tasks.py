"""The small real tasks of the demo (mlrsnet_hf.experiments) and of the quality benchmark (benchmarks/toys.py)."""

import sys

import numpy as np
import pytest
import torch
from conftest import REPO, SHARED
from transformers import GPT2Config, GPT2LMHeadModel

from mlrsnet_hf.experiments.data import digits_splits, ptb_small_splits
from mlrsnet_hf.experiments.vision_models import DigitsCNN, DigitsMLP

sys.path.insert(0, str(REPO / "benchmarks"))
from toys import MNIST1DCNN, ShiftedLabelsLM, corrupted_digits_splits, mnist1d_splits, small_gpt2_lm  # noqa: E402

PTB = SHARED / "data" / "ptb"


def fingerprints(rows):
    return {row["pixel_values"].numpy().tobytes() for row in rows}


def test_digits_splits_are_disjoint_balanced_and_standardised():
    splits = digits_splits(seed=0)
    assert {k: len(v) for k, v in splits.items()} == {"train": 1197, "meta": 200, "test": 400}
    train, meta, test = (fingerprints(splits[k]) for k in ("train", "meta", "test"))
    assert not (meta & test) and not (meta & train) and not (train & test)  # (digits has a few duplicate images)
    assert np.bincount([r["labels"] for r in splits["meta"]], minlength=10).tolist() == [20] * 10
    pixels = torch.stack([r["pixel_values"] for r in splits["train"] + splits["meta"] + splits["test"]])
    assert pixels.shape[1:] == (1, 8, 8) and abs(pixels.mean()) < 1e-3 and abs(pixels.std() - 1) < 1e-3
    assert digits_splits(seed=0)["meta"][5]["labels"] == splits["meta"][5]["labels"]  # deterministic


def test_mnist1d_is_generated_offline_in_the_reference_shapes():
    splits = mnist1d_splits(seed=0, meta_size=500)
    assert {k: len(v) for k, v in splits.items()} == {"train": 3500, "meta": 500, "test": 1000}
    assert splits["train"][0]["pixel_values"].shape == (1, 40)
    assert np.bincount([r["labels"] for r in splits["meta"]], minlength=10).tolist() == [50] * 10
    assert not (fingerprints(splits["meta"]) & fingerprints(splits["train"]))


def test_small_networks_give_logits_and_cross_entropy():
    x8, x40, y = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 40), torch.tensor([0, 3, 9, 1])
    for model, x in ((DigitsCNN(), x8), (DigitsMLP(), x8), (MNIST1DCNN(), x40)):
        out = model.eval()(pixel_values=x, labels=y)
        assert out.logits.shape == (4, 10)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, y))
    # conv 1->25 (k5), 25->25 (k3) twice, linear 25*5 -> 10
    assert sum(p.numel() for p in MNIST1DCNN().parameters()) == (25 * 5 + 25) + 2 * (25 * 25 * 3 + 25) + (
        125 * 10 + 10
    )


def test_shifted_labels_lm_matches_the_causal_lm_loss():
    """Pre-shifted labels through the wrapper give exactly GPT-2's own loss on the unshifted sequence."""
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2)).eval()
    tokens = torch.randint(0, 50, (3, 11))
    own = lm(input_ids=tokens, labels=tokens).loss
    wrapped = ShiftedLabelsLM(lm)(input_ids=tokens[:, :-1], labels=tokens[:, 1:])
    torch.testing.assert_close(wrapped.loss, own)
    summed = ShiftedLabelsLM(lm)(input_ids=tokens[:, :-1], labels=tokens[:, 1:], num_items_in_batch=60)
    torch.testing.assert_close(summed.loss, own * 30 / 60)  # the Trainer's token-count normalisation
    assert small_gpt2_lm(100).get_output_embeddings().weight.shape == (100, 64)


def test_ptb_small_splits_never_overlap():
    if not (PTB / "ptb.valid.txt").is_file():
        pytest.skip(f"Penn Treebank text not found in {PTB}")
    chunks, vocab = ptb_small_splits(str(PTB), batch_size=10, seq_len=35, eval_batch_size=20, meta_fraction=0.25)
    assert len(vocab) == 7596
    # train = ptb.valid; meta + test = ptb.test cut at a sentence boundary (a quarter of the sentences)
    valid_words = sum(
        len(line.split()) + 1 for line in (PTB / "ptb.valid.txt").read_text().splitlines() if line.strip()
    )
    test_lines = [line for line in (PTB / "ptb.test.txt").read_text().splitlines() if line.strip()]
    cut = int(len(test_lines) * 0.25)
    meta_words = sum(len(line.split()) + 1 for line in test_lines[:cut])
    assert chunks["train"].streams.numel() == valid_words // 10 * 10
    assert chunks["meta"].streams.numel() == meta_words // 20 * 20
    assert chunks["test"].streams.numel() == (sum(len(x.split()) + 1 for x in test_lines) - meta_words) // 20 * 20
    example = chunks["meta"][0]
    assert torch.equal(example["input_ids"][1:], example["labels"][:-1])


def test_corrupted_digits_keep_the_clean_test_set_and_a_small_clean_meta_set():
    clean = digits_splits(0)
    noisy = corrupted_digits_splits("gaussian_noise", seed=0)
    flipped = corrupted_digits_splits("labels40", seed=0)

    def stack(rows):
        return torch.stack([r["pixel_values"] for r in rows]), torch.tensor([r["labels"] for r in rows])

    test_x, test_y = stack(clean["test"])
    for splits in (noisy, flipped):
        x, y = stack(splits["test"])
        assert torch.allclose(x, test_x, atol=1e-5) and torch.equal(y, test_y)  # the same clean test set
        meta_y = stack(splits["meta"])[1]
        assert torch.bincount(meta_y, minlength=10).tolist() == [10] * 10  # 10 clean images per class
    clean_x, clean_y = stack(clean["train"])
    noisy_x, noisy_y = stack(noisy["train"])
    assert torch.equal(noisy_y, clean_y) and not torch.allclose(noisy_x, clean_x, atol=0.1)
    flipped_x, flipped_y = stack(flipped["train"])
    assert torch.allclose(flipped_x, clean_x, atol=1e-5)
    assert (flipped_y != clean_y).float().mean().item() == pytest.approx(0.4, abs=0.05)
