"""Run by tests/test_distributed.py under `accelerate launch`: the world size a run sees, or its error."""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny import DigitsNet, digits  # noqa: E402

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(out / "run"), max_steps=2, per_device_train_batch_size=8, gamma=0.1, report_to="none",
        save_strategy="no", disable_tqdm=True, seed=0, use_cpu="--use_cpu" in sys.argv,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=digits(64), schedule=MLRSNetSchedule(hidden_size=4)
    )
    try:
        trainer.train()
        message = f"world {trainer.accelerator.num_processes}"
    except RuntimeError as e:
        message = str(e)
    (out / f"rank{os.environ.get('RANK', '0')}.txt").write_text(message)
    # leave the process group cleanly: a gloo group torn down at interpreter exit can abort a rank
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()


if __name__ == "__main__":
    main()
