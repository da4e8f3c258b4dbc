"""Train one of the paper's tasks with a learned schedule, no tuning (the paper's transfers).

    python examples/transfer.py --task svhn-resnet18 --schedule org/mlrsnet-cifar10-200ep --output_dir svhn
    python examples/transfer.py --task ptb-lstm2 --schedule mlrsnet-cifar10-resnet18 --output_dir ptb  # image -> text

Same code as `mlrsnet transfer`; every MLRSNetConfig / TrainingArguments flag works.
"""

import json
import sys

from mlrsnet_hf.experiments.tasks import run

if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:], meta_train=False), indent=2))  # the final metrics
