"""examples/finetune_any_model.py on a GPT-2 (tiny config) with a word-level tokenizer, on the real PTB text."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, SHARED
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from mlrsnet_hf import MLRSNetSchedule
from mlrsnet_hf.experiments.data import EOS, build_vocabulary, load_ptb

PTB = SHARED / "data" / "ptb"


@pytest.fixture
def gpt2_dir(tmp_path):
    """A local model repo (config, weights, tokenizer) as `from_pretrained` expects it, built offline."""
    if not (PTB / "ptb.valid.txt").is_file():
        pytest.skip(f"Penn Treebank text not found in {PTB}")
    sentences = load_ptb(str(PTB))
    vocab = build_vocabulary(sentences["validation"], sentences["test"])
    word_level = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    word_level.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=word_level, unk_token="<unk>", eos_token=EOS)
    eos = vocab.index(EOS)
    config = GPT2Config(
        vocab_size=len(vocab), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=eos, eos_token_id=eos
    )
    GPT2LMHeadModel(config).save_pretrained(tmp_path / "gpt2-tiny")
    tokenizer.save_pretrained(tmp_path / "gpt2-tiny")
    data = tmp_path / "ptb-text"
    data.mkdir()
    for split, name in (("validation", "train"), ("test", "test")):
        (data / f"{name}.txt").write_text("\n".join(sentences[split][:600]) + "\n")
    return tmp_path / "gpt2-tiny", data


def test_gpt2_meta_trains_with_adamw(gpt2_dir, tmp_path):
    model_dir, data = gpt2_dir
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "finetune_any_model.py"), "--model_name_or_path", str(model_dir),
         "--dataset", "text", "--data_files", f"train={data / 'train.txt'}", f"test={data / 'test.txt'}",
         "--text_column", "text", "--meta_split", "test[:50%]", "--eval_split", "test[50%:]", "--block_size", "32",
         "--meta_train", "true", "--meta_update_interval", "2", "--max_steps", "6", "--per_device_train_batch_size", "8",
         "--logging_steps", "1", "--learning_rate", "1e-3", "--output_dir", str(out), "--use_cpu", "--disable_tqdm", "true",
         "--save_strategy", "no"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "not used" not in run.stderr  # AdamW, gamma unset: "relative", learning_rate sets the scale (used)
    schedule = MLRSNetSchedule.from_pretrained(out / "schedule")
    assert schedule.gamma == "relative" and schedule.meta_training["optimizer"] == "AdamW"
    vocab_size = json.loads((model_dir / "config.json").read_text())["vocab_size"]
    assert schedule.meta_training["num_classes"] == vocab_size  # C = the vocabulary, from the model
    assert (out / "model.safetensors").is_file()
    metrics = json.loads((out / "eval_results.json").read_text())
    assert 1 < metrics["eval_perplexity"] < 3 * vocab_size  # about chance level after 6 steps, and finite


@pytest.mark.parametrize(
    ("meta", "evaluation"), [("test", "test"), ("test[:60%]", "test[50%:]"), ("validation", "validation[90%:]")]
)
def test_overlapping_meta_and_eval_splits_are_refused(meta, evaluation, tmp_path):
    """The schedule would learn from the evaluation data: refused at once, before any model or data is loaded."""
    run = subprocess.run(
        [sys.executable, str(REPO / "examples" / "finetune_any_model.py"), "--model_name_or_path",
         str(tmp_path / "no-model-needed"), "--meta_split", meta, "--eval_split", evaluation, "--meta_train", "true",
         "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "error: The evaluation and meta splits overlap" in run.stderr
    assert not (tmp_path / "out").exists()
