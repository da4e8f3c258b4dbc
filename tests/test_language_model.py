"""Penn Treebank (real text from ../shared/data/ptb, and the Hub schema) and the LSTM language model."""

import math

import pytest
import torch
from conftest import SHARED
from datasets import Dataset
from test_trainer import Recorder

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.experiments.data import EOS, LMChunks, build_vocabulary, encode, load_ptb, load_ptb_lm
from mlrsnet_hf.experiments.language_models import lstm_lm
from mlrsnet_hf.meta_gradient import meta_loss

PTB = SHARED / "data" / "ptb"


@pytest.fixture
def ptb_dir():
    if not (PTB / "ptb.valid.txt").is_file():
        pytest.skip(f"Penn Treebank text not found in {PTB} (set MLRSNET_SHARED to the shared/ folder)")
    return PTB


def test_real_ptb_text(ptb_dir):
    sentences = load_ptb(str(ptb_dir))
    assert set(sentences) == {"validation", "test"}  # the training file is not shipped here
    vocab = build_vocabulary(sentences["validation"], sentences["test"])
    assert EOS in vocab and "<unk>" in vocab and len(vocab) == len(set(vocab))
    ids = encode(sentences["validation"], vocab)
    words = sum(len(s.split()) + 1 for s in sentences["validation"])
    assert len(ids) == words and 70_000 < words < 80_000  # ~74k words (README of ../shared/data/ptb)
    assert (ids == vocab.index(EOS)).sum() == len(sentences["validation"])


def test_hub_schema_ptb(tmp_path):
    text = {"train": ["the cat sat", "a dog ran <unk>"], "validation": ["the dog sat"], "test": ["a cat ran"]}
    for split, rows in text.items():
        out = tmp_path / "ptb" / "ptb_text_only" / f"{split}-00000-of-00001.parquet"
        out.parent.mkdir(parents=True, exist_ok=True)
        Dataset.from_dict({"sentence": rows}).to_parquet(str(out))
    assert load_ptb(str(tmp_path / "ptb"), cache_dir=str(tmp_path / "cache")) == text
    vocab = build_vocabulary(*text.values())
    assert encode(["the zebra"], vocab).tolist() == [vocab.index("the"), vocab.index("<unk>"), vocab.index(EOS)]


def test_chunks_are_contiguous_per_stream():
    ids = torch.arange(1000)
    chunks = LMChunks(ids, batch_size=4, seq_len=7)
    assert len(chunks) == 4 * ((250 - 1) // 7)
    for i in range(len(chunks) - 4):
        this, following = chunks[i], chunks[i + 4]  # same stream, next batch
        assert torch.equal(this["labels"], this["input_ids"] + 1)
        assert following["input_ids"][0].item() == this["labels"][-1].item()
    assert chunks[1]["input_ids"][0].item() == 250  # stream 1 starts a quarter in


def test_lm_carries_its_state_and_meta_forwards_leave_it_alone():
    torch.manual_seed(0)
    model = lstm_lm(50, hidden_size=16, dropout=0.0).train()
    a, b = torch.randint(0, 50, (3, 5)), torch.randint(0, 50, (3, 5))
    first = model(a, b).loss
    carried = model(b, a).loss
    state = model.state_h.clone()
    model.reset_state()
    fresh = model(b, a).loss
    assert carried.item() != fresh.item()  # batch 2 continued from batch 1's state
    model.state_h, model.state_c = state, model.state_c  # restore and check functional_call leaves it
    meta_loss(model, {"input_ids": a, "labels": b})
    assert torch.equal(model.state_h, state)
    model(torch.randint(0, 50, (2, 5)))  # another batch size: starts from zero
    assert model.state_h.shape[1] == 2
    model.eval()
    model(a)
    assert model.state_h.shape[1] == 3 and first.item() > 0
    # num_items_in_batch: token sum / the count the Trainer passes
    summed = model.train()(a, b, num_items_in_batch=30).loss
    model.reset_state()
    mean = model(a, b).loss
    assert summed.item() == pytest.approx(mean.item() * 15 / 30, rel=1e-5)


def test_meta_train_an_lstm_lm_on_real_ptb(ptb_dir, tmp_path):
    chunks, vocab = load_ptb_lm(
        str(ptb_dir), batch_size=8, seq_len=35, train_split="validation[:90%]", meta_split="validation[90%:]"
    )
    torch.manual_seed(0)
    model = lstm_lm(len(vocab), hidden_size=32, dropout=0.5)
    recorder = Recorder()
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        train_sampling_strategy="sequential", meta_train=True, meta_update_interval=3, meta_batch_size=8,
        input_normalization="log_num_classes", gamma="40", max_grad_norm=0.25, weight_decay=5e-6,
        logging_steps=1, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=model, args=args, train_dataset=chunks["train"], meta_dataset=chunks["meta"], callbacks=[recorder]
    )
    trainer.train()
    assert trainer.lr_scheduler.run.num_classes == len(vocab)  # C = vocabulary size, from the model
    assert trainer.lr_scheduler.run.input_normalization == "log_num_classes"
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    used = [lrs[0] for lrs in recorder.lrs]
    # The step loss (token-normalised micro-batches summed, as the Trainer logs it) drove the LR.
    assert len(used) == 12 and all(0 < lr < 40 for lr in used)
    assert losses[0] == pytest.approx(math.log(len(vocab)), rel=0.05)  # chance level at the start
    assert trainer.lr_scheduler.meta.batches.index == 4 * 8  # 4 meta steps
    # Until the first meta update (after step 3) theta is the seeded initial one: replay it on the logged losses.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(args.seed)
        initial = MLRSNetSchedule(gamma=40.0, input_normalization="log_num_classes")
    replay = initial.start(num_classes=len(vocab))
    replay.enter_stage(0)
    assert used[:3] == pytest.approx([replay.step(loss) for loss in losses[:3]], rel=1e-6)
