"""Schedule families are plug-ins: a toy third family, defined here with no edit to the core, trains, saves, loads
and is described through MLRSNetTrainer, a plain Trainer with MLRSNetCallback, and the `mlrsnet` command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin
from torch import nn
from transformers import Trainer, TrainingArguments

from mlrsnet_hf import LRController, MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.cli import main
from mlrsnet_hf.driver import LRDriver
from mlrsnet_hf.families import ScheduleFamily, family_of, register_family, registered_families
from mlrsnet_hf.hub import ScheduleRepoMixin, load_any_schedule
from mlrsnet_hf.plotting import plot_lr_curve
from mlrsnet_hf.provenance import model_tags


class HalvingSchedule(
    nn.Module, ScheduleRepoMixin, PyTorchModelHubMixin, library_name="mlrsnet_hf", tags=["toy-schedule"]
):
    """LR = learning_rate * decay ** (step // every): one learned number, saved as a weight."""

    model_type = "toy_halving"

    def __init__(self, every: int = 3, decay: float = 0.5) -> None:
        super().__init__()
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}.")
        self.every = every
        self.decay = nn.Parameter(torch.tensor(float(decay)))

    @property
    def config(self) -> dict[str, Any]:
        return {"model_type": self.model_type, "every": self.every}

    def weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.state_dict().items()}

    def lrs(self, base_lr: float, num_steps: int) -> list[float]:
        return [base_lr * float(self.decay.detach()) ** (t // self.every) for t in range(num_steps)]

    def plot_preview(self, path: str | Path) -> None:
        plot_lr_curve(self.lrs(1.0, 12), path, title="toy halving schedule")

    def plot_lr_history(self, lrs: list[float], path: str | Path) -> None:
        plot_lr_curve(lrs, path)

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        return ModelCard(
            f"---\nlibrary_name: mlrsnet_hf\n---\n# Toy halving schedule\n\ndecay {float(self.decay.detach()):.3g}\n"
        )


class HalvingDriver(LRDriver):
    """Takes no run options (the base class's from_options refuses any) and no held-out data."""

    def _start(self, restored: dict[str, Any] | None) -> None:
        self.step_of_run = 0 if restored is None else restored["step_of_run"]

    def _lr_for_step(self, step: int, loss: torch.Tensor) -> tuple[float, float]:
        self.step_of_run = step + 1
        return self.base_lr * float(self.schedule.decay.detach()) ** (step // self.schedule.every), self.base_lr

    def _runtime_state(self) -> dict[str, Any]:
        return {"step_of_run": self.step_of_run}


def describe_halving(schedule: HalvingSchedule, name: str) -> str:
    return f"toy halving schedule: {name}, every {schedule.every} steps x{float(schedule.decay):g}"


def plot_halving(schedule, out, *, losses=None, num_classes=None, base_lr=None) -> list[float]:
    lrs = schedule.lrs(base_lr or 1.0, len(losses) if losses else 12)
    plot_lr_curve(lrs, out)
    return lrs


TOY = ScheduleFamily(
    model_type="toy_halving",
    schedule_class=HalvingSchedule,
    driver_class=HalvingDriver,
    tag="toy-halving",
    description="a toy step schedule with one learned factor",
    describe=describe_halving,
    plot=plot_halving,
)


@pytest.fixture(scope="module", autouse=True)
def toy_family():
    register_family(TOY)
    yield
    # the registry keeps it: registering the same family again (another test module) is allowed


class Regression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 1)

    def forward(self, x, labels=None):
        out = self.linear(x).squeeze(-1)
        return {"loss": nn.functional.mse_loss(out, labels), "logits": out}


def data(n: int = 64) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return [{"x": x[i], "labels": x[i].sum()} for i in range(n)]


COMMON = dict(
    max_steps=8, per_device_train_batch_size=8, learning_rate=0.1, logging_steps=1, report_to="none",
    save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, optim="sgd",
)  # fmt: skip
EXPECTED = [0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025, 0.025]


def logged_lrs(trainer) -> list[float]:
    return [entry["learning_rate"] for entry in trainer.state.log_history if "learning_rate" in entry]


def test_the_built_in_families_are_registered():
    families = registered_families()
    assert families["mlrsnet_schedule"].schedule_class is MLRSNetSchedule
    assert families["lr_controller"].schedule_class is LRController
    assert family_of(MLRSNetSchedule(num_stages=1)).tag == "mlrsnet"
    with pytest.raises(TypeError, match="registered schedule family"):
        family_of(nn.Linear(1, 1))


def test_a_third_family_trains_saves_loads_and_is_described_without_touching_the_core(tmp_path, capsys):
    schedule = HalvingSchedule(every=3, decay=0.5)
    schedule.save_pretrained(tmp_path / "toy")
    loaded = load_any_schedule(tmp_path / "toy")
    assert isinstance(loaded, HalvingSchedule) and float(loaded.decay.detach()) == 0.5
    assert json.loads((tmp_path / "toy" / "config.json").read_text())["model_type"] == "toy_halving"

    # MLRSNetTrainer, from the repo's path
    trainer = MLRSNetTrainer(
        model=Regression(), args=MLRSNetConfig(output_dir=str(tmp_path / "a"), **COMMON), train_dataset=data(),
        schedule=str(tmp_path / "toy"),
    )  # fmt: skip
    trainer.train()
    assert logged_lrs(trainer) == pytest.approx(EXPECTED, rel=1e-12)
    assert model_tags(trainer.schedule)[-1] == "toy-halving"
    trainer.save_schedule(tmp_path / "saved")
    assert float(load_any_schedule(tmp_path / "saved").decay.detach()) == 0.5

    # a plain Trainer with the callback: the same LRs
    callback = MLRSNetCallback(tmp_path / "toy")
    plain = Trainer(
        model=Regression(), args=TrainingArguments(output_dir=str(tmp_path / "b"), **COMMON), train_dataset=data(),
        callbacks=[callback], optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    plain.train()
    assert logged_lrs(plain) == logged_lrs(trainer)
    assert model_tags(callback.schedule) == ["mlrsnet_hf", "learned-lr-schedule", "toy-halving"]

    # the CLI
    capsys.readouterr()  # (the runs' logs)
    assert main(["info", str(tmp_path / "toy")]) == 0
    assert capsys.readouterr().out.strip() == f"toy halving schedule: {tmp_path / 'toy'}, every 3 steps x0.5"
    assert main(["plot", str(tmp_path / "toy"), "--out", str(tmp_path / "plot.png")]) == 0
    assert (tmp_path / "plot.png").stat().st_size > 0 and "12 steps, LR from 1 to 0.125" in capsys.readouterr().out


def test_a_family_refuses_what_it_does_not_take(tmp_path):
    with pytest.raises(ValueError, match=r"HalvingSchedule takes no schedule options \(got \['gamma'\]\)"):
        MLRSNetCallback(HalvingSchedule(), gamma=0.1)
    with pytest.raises(ValueError, match=r"HalvingSchedule takes no schedule options \(got \['meta_train'\]\)"):
        MLRSNetTrainer(
            model=Regression(), args=MLRSNetConfig(output_dir=str(tmp_path), meta_train=True, **COMMON),
            train_dataset=data(), schedule=HalvingSchedule(), meta_dataset=data(),
        )  # fmt: skip


def test_registering_a_second_family_under_a_taken_model_type_is_refused():
    class Other(HalvingSchedule):
        pass

    with pytest.raises(ValueError, match="already registered"):
        register_family(ScheduleFamily(**{**TOY.__dict__, "schedule_class": Other}))
