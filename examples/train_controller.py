"""Train a PPO LR controller (Xu et al., 2019) on one of the paper's tasks and save it as a schedule repo.

    pip install 'mlrsnet_hf[ppo]'
    python examples/train_controller.py --task cifar10-resnet18 --output_dir lr-controller-cifar10 --episodes 20
    mlrsnet transfer --task svhn-resnet18 --schedule lr-controller-cifar10 --optim adamw_torch --learning_rate 1e-3 \\
        --weight_decay 0 --output_dir svhn-with-controller

Same code as `mlrsnet train-controller`; see `mlrsnet train-controller --help` for every option.
"""

import json
import sys

from mlrsnet_hf.experiments.tasks import train_controller_run

if __name__ == "__main__":
    print(json.dumps(train_controller_run(sys.argv[1:]), indent=2))
