"""The paper's robustness study (Sec. 4.3) on CIFAR-10-C / CIFAR-100-C: one table over the corruptions.

For each corruption (one task each: the 10,000 corrupted images at one severity), train ResNet-18 with
  * MLR-SNet meta-trained on that task from a clean meta set of 10 images per class (the paper's Table 1);
  * with --transfer: the schedule meta-trained on gaussian_noise, transferred to the other corruptions with no
    tuning (the paper's Table 7);
  * hand-designed baselines (plain Trainer): SGD with a fixed LR and with a cosine schedule, from --learning_rate;
and test on the clean CIFAR training set. Writes OUT/<corruption>/<method>/ and OUT/robustness.{json,md}
(mean ± std of the test accuracy over the corruptions, per method).

    python examples/robustness_cifar_c.py --task cifar10c-resnet18 --output_dir robustness [--transfer]
        [--corruptions gaussian_noise fog ...] [--severity 5] [--dataset DIR --clean_dataset DIR]
        [any MLRSNetConfig / TrainingArguments flag, e.g. --num_train_epochs 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from mlrsnet_hf.experiments.corrupted_data import CIFAR_C_CORRUPTIONS
from mlrsnet_hf.experiments.tasks import run, run_baseline

SOURCE = "gaussian_noise"  # the corruption the transferred schedule is meta-trained on (the paper's Table 7)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="cifar10c-resnet18", choices=["cifar10c-resnet18", "cifar100c-resnet18"])
    parser.add_argument("--output_dir", type=Path, required=True)
    parser.add_argument("--corruptions", nargs="+", default=list(CIFAR_C_CORRUPTIONS))
    parser.add_argument("--transfer", action="store_true", help=f"also transfer the schedule learned on {SOURCE}")
    parser.add_argument("--baseline_lr", type=float, default=0.1, help="the baselines' (peak) SGD learning rate")
    args, training = parser.parse_known_args()
    common = ["--task", args.task, *training]
    results: dict[str, dict[str, float]] = {}

    def record(method: str, corruption: str, metrics: dict) -> None:
        results.setdefault(method, {})[corruption] = metrics["eval_accuracy"]
        print(f"{corruption:>18} | {method}: test accuracy {metrics['eval_accuracy']:.4f}", file=sys.stderr)

    corruptions = list(args.corruptions)
    if args.transfer and SOURCE not in corruptions:
        corruptions.insert(0, SOURCE)
    for corruption in corruptions:
        base = [*common, "--corruption", corruption]
        out = args.output_dir / corruption
        schedule_dir = out / "mlrsnet-meta-trained"
        record("MLR-SNet meta-trained", corruption, run([*base, "--output_dir", str(schedule_dir)], meta_train=True))
        for method, scheduler in (("SGD fixed", "constant"), ("SGD cosine", "cosine")):
            argv = [*base, "--output_dir", str(out / method.replace(" ", "-").lower()),
                    "--learning_rate", str(args.baseline_lr)]  # fmt: skip
            record(method, corruption, run_baseline(argv, scheduler))
    if args.transfer:
        source = args.output_dir / SOURCE / "mlrsnet-meta-trained"
        for corruption in (c for c in corruptions if c != SOURCE):
            argv = [*common, "--corruption", corruption, "--schedule", str(source),
                    "--output_dir", str(args.output_dir / corruption / "mlrsnet-transferred")]  # fmt: skip
            record(f"MLR-SNet transferred from {SOURCE}", corruption, run(argv, meta_train=False))
    table = {
        method: {
            "mean": statistics.fmean(per.values()),
            "std": statistics.stdev(per.values()) if len(per) > 1 else 0.0,
            "per_corruption": per,
        }
        for method, per in results.items()
    }
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "robustness.json").write_text(json.dumps(table, indent=2) + "\n")
    lines = ["| method | test accuracy, mean ± std over corruptions | corruptions |", "|---|---|---|"]
    lines += [f"| {m} | {t['mean']:.4f} ± {t['std']:.4f} | {len(t['per_corruption'])} |" for m, t in table.items()]
    (args.output_dir / "robustness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
