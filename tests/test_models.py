"""The paper's image networks as transformers models, trained by MLRSNetTrainer on Hub-schema data."""

import pytest
import torch
from hub_data import write_hub_layout

from mlrsnet_hf import MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.experiments.data import load_image_dataset
from mlrsnet_hf.experiments.vision_models import (
    CifarNetConfig,
    CifarNetForImageClassification,
    cifar_net,
    cifar_resnet18,
    wide_resnet,
)


def test_parameter_counts_match_the_standard_architectures():
    def count(model):
        return sum(p.numel() for p in model.parameters())

    assert count(cifar_resnet18(10)) == 11_173_962
    assert count(wide_resnet(100)) == 36_546_980
    # torchvision's mobilenet_v2 / shufflenet_v2_x1_0 with a 10-class head (strides differ, not parameters)
    assert count(cifar_net("mobilenetv2", 10)) == 2_236_682
    assert count(cifar_net("shufflenetv2", 10)) == 1_263_854


@pytest.mark.parametrize("architecture", ["mobilenetv2", "shufflenetv2"])
def test_small_networks_keep_resolution_for_cifar(architecture):
    model = cifar_net(architecture, 10).eval()
    features = model.features(torch.randn(2, 3, 32, 32))
    assert features.shape[-2:] == (4, 4)  # CIFAR variants: /8 overall (ImageNet variants would reach 1x1)
    out = model(pixel_values=torch.randn(2, 3, 32, 32), labels=torch.tensor([1, 2]))
    assert out.logits.shape == (2, 10) and torch.isfinite(out.loss)


def test_forward_and_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = wide_resnet(num_labels=10, depth=10, widen_factor=2, dropout=0.3).eval()
    x = torch.randn(4, 3, 32, 32)
    out = model(pixel_values=x, labels=torch.tensor([0, 1, 2, 3]))
    assert out.logits.shape == (4, 10) and out.loss.ndim == 0
    model.save_pretrained(tmp_path / "wrn")
    loaded = CifarNetForImageClassification.from_pretrained(tmp_path / "wrn").eval()
    assert loaded.config.architecture == "wrn" and loaded.config.depth == 10
    assert torch.equal(loaded(pixel_values=x).logits, model(pixel_values=x).logits)
    with pytest.raises(ValueError, match="6n \\+ 4"):
        CifarNetConfig(architecture="wrn", depth=27)
    with pytest.raises(ValueError, match="architecture"):
        CifarNetConfig(architecture="vgg")


def test_meta_train_a_wrn_on_cifar_schema_data(tmp_path):
    root = write_hub_layout(tmp_path / "cifar10", "cifar10", n_train=300, n_test=60)
    splits, spec = load_image_dataset("cifar10", str(root), meta_size=60, cache_dir=str(tmp_path / "cache"))
    torch.manual_seed(0)
    model = wide_resnet(num_labels=spec.num_classes, depth=10, widen_factor=1)
    args = MLRSNetConfig(optim="sgd",
        output_dir=str(tmp_path / "out"), max_steps=6, per_device_train_batch_size=16, meta_train=True,
        meta_update_interval=2, remove_unused_columns=False, report_to="none", save_strategy="no",
        disable_tqdm=True, use_cpu=True, logging_steps=1, weight_decay=5e-4,
    )  # fmt: skip
    trainer = MLRSNetTrainer(
        model=model, args=args, train_dataset=splits["train"], eval_dataset=splits["test"],
        meta_dataset=splits["meta"],
    )  # fmt: skip
    initial = {k: v.clone() for k, v in trainer.schedule.weights().items()}
    trainer.train()
    assert trainer.lr_scheduler.run.num_classes == 10  # from the model config's num_labels
    assert any(not torch.equal(v, initial[k]) for k, v in trainer.schedule.weights().items())
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert len(lrs) == 6 and len(set(lrs)) > 1
    metrics = trainer.evaluate()
    assert torch.isfinite(torch.tensor(metrics["eval_loss"]))
    trainer.save_schedule(tmp_path / "schedule", meta_training={"dataset": spec.hub_id})
    assert MLRSNetSchedule.from_pretrained(tmp_path / "schedule").meta_training["model"] == "mlrsnet_cifar_net"
