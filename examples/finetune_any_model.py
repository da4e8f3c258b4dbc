"""Train any transformers causal language model with a learned MLR-SNet schedule (or meta-train one).

    python examples/finetune_any_model.py --model_name_or_path gpt2 --dataset ptb-text-only/ptb_text_only \\
        --text_column sentence --schedule org/mlrsnet-cifar10-200ep --output_dir gpt2-ptb --learning_rate 5e-4

The model and tokenizer come from `AutoModelForCausalLM` / `AutoTokenizer` (a Hub id or a local
directory), the text from `datasets.load_dataset` (a Hub id, a local directory, or `text` files via
--data_files). Texts are tokenized and packed into blocks of --block_size tokens. With the default
optimizer of this script (AdamW) the schedule runs in relative mode: --learning_rate is the LR of the
first step and the upper bound. Every MLRSNetConfig / TrainingArguments flag works; --meta_train true
learns the schedule online on --meta_split. Splits take `datasets`' percent slices (e.g. --meta_split
'test[:25%]' --eval_split 'test[25%:]'); overlapping splits (the meta and the evaluation split above all:
the schedule would learn from the test set) are refused before anything is loaded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForLanguageModeling, HfArgumentParser

from mlrsnet_hf import MLRSNetConfig, MLRSNetTrainer
from mlrsnet_hf.experiments.data import disjoint_splits


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(metadata={"help": "A causal LM: Hub id or local directory."})
    dataset: str = field(default="ptb-text-only/ptb_text_only", metadata={"help": "Dataset: Hub id or local path."})
    dataset_config: str | None = field(default=None, metadata={"help": "The dataset's configuration name."})
    data_files: list[str] | None = field(
        default=None,
        metadata={"help": "Data files as SPLIT=PATH (a bare PATH is the train split), e.g. with --dataset text."},
    )
    text_column: str = field(default="sentence", metadata={"help": "The column holding the text."})
    train_split: str = field(default="train", metadata={"help": "Split to train on (e.g. 'train', 'train[:90%]')."})
    meta_split: str = field(
        default="validation",
        metadata={"help": "Split for meta updates (with --meta_train); disjoint from the others."},
    )
    eval_split: str = field(default="test", metadata={"help": "Split to evaluate on; disjoint from the others."})
    block_size: int = field(default=128, metadata={"help": "Tokens per training sequence."})


def main() -> None:
    parser = HfArgumentParser((ScriptArguments, MLRSNetConfig))
    parser.set_defaults(optim="adamw_torch", learning_rate=5e-4, report_to="none", remove_unused_columns=False)
    script, args = parser.parse_args_into_dataclasses()
    roles = {"train": script.train_split, "evaluation": script.eval_split}
    if args.meta_train:
        roles["meta"] = script.meta_split
    try:
        disjoint_splits(roles)
    except ValueError as e:
        parser.error(str(e))

    tokenizer = AutoTokenizer.from_pretrained(script.model_name_or_path)
    model = AutoModelForCausalLM.from_pretrained(script.model_name_or_path)
    files = None
    if script.data_files:
        files = dict(item.split("=", 1) if "=" in item else ("train", item) for item in script.data_files)
    available = load_dataset(script.dataset, script.dataset_config, data_files=files)  # the splits there are

    def tokenize(batch):
        return tokenizer(batch[script.text_column])

    def pack(batch):
        ids = list(chain.from_iterable(batch["input_ids"]))
        usable = len(ids) - len(ids) % script.block_size
        blocks = [ids[i : i + script.block_size] for i in range(0, usable, script.block_size)]
        return {"input_ids": blocks, "attention_mask": [[1] * len(b) for b in blocks]}

    def prepare(spec):
        raw = load_dataset(script.dataset, script.dataset_config, data_files=files, split=spec)
        tokenized = raw.map(tokenize, batched=True, remove_columns=raw.column_names)
        return tokenized.map(pack, batched=True, remove_columns=tokenized.column_names)

    splits = {
        spec: prepare(spec)
        for spec in {script.train_split, script.eval_split, script.meta_split}
        if spec.split("[")[0] in available
    }
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    trainer = MLRSNetTrainer(
        model=model,
        args=args,
        train_dataset=splits[script.train_split],
        eval_dataset=splits.get(script.eval_split),
        meta_dataset=splits.get(script.meta_split) if args.meta_train else None,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        processing_class=tokenizer,
    )
    trainer.train()
    metrics = trainer.evaluate() if script.eval_split in splits else {}
    if "eval_loss" in metrics:
        metrics["eval_perplexity"] = math.exp(metrics["eval_loss"])
    if metrics:
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    trainer.save_model()
    if args.meta_train:
        trainer.save_schedule(
            f"{args.output_dir}/schedule",
            meta_training={"dataset": script.dataset, "model": script.model_name_or_path},
        )


if __name__ == "__main__":
    main()
