"""Meta-train an MLR-SNet schedule on one of the paper's tasks and save it as a schedule repo.

    python examples/meta_train.py --task cifar10-resnet18 --output_dir mlrsnet-cifar10-resnet18
    accelerate launch --config_file examples/accelerate/multi_gpu.yaml examples/meta_train.py \\
        --task cifar100-wrn28-10 --output_dir mlrsnet-cifar100-wrn --push_to_hub --hub_model_id org/mlrsnet-cifar100-wrn

Every MLRSNetConfig / TrainingArguments flag works (e.g. --max_steps 6 --per_device_train_batch_size 16);
`--dataset` takes a Hub id or a local directory in the Hub repo's layout. Same code as `mlrsnet meta-train`.
"""

import json
import sys

from mlrsnet_hf.experiments.tasks import run

if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1:], meta_train=True), indent=2))  # the final metrics
