"""Run by tests/test_distributed.py under 2 processes: a bad setting one rank detects must fail on every rank."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import DigitsNet, digits  # noqa: E402

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=16, gamma="auto", num_classes=10,
        report_to="none", save_strategy="no", disable_tqdm=True, seed=0, use_cpu=True,
    )  # fmt: skip
    # one batch of the training set in all: only rank 0 has a batch to measure the average loss on
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=digits(16), schedule=MLRSNetSchedule(hidden_size=4)
    )
    rank = trainer.accelerator.process_index
    try:
        trainer.train()
        message = "no error"
    except ValueError as e:
        message = str(e)
    (out / f"rank{rank}.txt").write_text(message)
    trainer.accelerator.wait_for_everyone()
    # Exit without tearing the gloo group down: after the error above, its teardown (at end_training or at
    # interpreter exit) sometimes aborted a rank under load ("terminate called without an active exception").
    # Everything this script reports is in the files written above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
