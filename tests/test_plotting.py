"""The pictures: readable LR axes, training curves with a title and no duplicate panels or points."""

import pytest
from matplotlib.figure import Figure
from PIL import Image

from mlrsnet_hf.plotting import format_lr_axis, plot_training_curves


def tick_labels(ax, values):
    ax.plot(range(len(values)), values)
    ax.figure.canvas.draw()  # the Agg canvas of a bare Figure
    return [t.get_text() for t in ax.get_yticklabels() if t.get_text()], ax.get_yscale()


def test_a_narrow_lr_range_gets_a_linear_axis_with_plain_ticks():
    lrs = [0.47, 0.4, 0.33, 0.26]  # the demo schedule's decay: under a decade
    ax = Figure().subplots()
    format_lr_axis(ax, lrs)
    labels, scale = tick_labels(ax, lrs)
    assert scale == "linear" and len(labels) >= 3
    assert all(0.2 <= float(t) <= 0.5 for t in labels)  # plain numbers such as 0.25, no 10^x notation


def test_a_wide_lr_range_gets_a_log_axis_with_numbers_at_1_2_5():
    ax = Figure().subplots()
    lrs = [0.3 * (1 - t / 600) + 1e-4 for t in range(600)]  # linear decay: three and a half decades
    format_lr_axis(ax, lrs)
    labels, scale = tick_labels(ax, lrs)
    assert scale == "log"
    assert {"0.001", "0.01", "0.1"} <= set(labels) and all("$" not in t for t in labels)
    assert not [t for t in ax.get_yticklabels(minor=True) if t.get_text()]  # no minor labels piled up


def test_training_curves_have_a_title_one_loss_panel_and_no_repeated_points(tmp_path):
    history = [
        {"loss": 2.3, "step": 2}, {"loss": 1.9, "step": 4},
        {"eval_loss": 2.0, "eval_accuracy": 0.3, "eval_runtime": 1.0, "step": 4},
        {"loss": 1.2, "step": 8}, {"eval_loss": 1.4, "eval_accuracy": 0.5, "step": 8},
        {"eval_loss": 1.4, "eval_accuracy": 0.5, "eval_runtime": 1.0, "step": 8},  # trainer.evaluate() after the run
    ]  # fmt: skip
    fig = plot_training_curves(history, tmp_path / "c.png", title="cifar10-resnet18: transfer", eval_split="test")
    assert fig.get_suptitle() == "cifar10-resnet18: transfer"
    loss_ax, accuracy_ax = fig.axes  # the test loss shares the training loss's panel; no runtime panel
    assert [line.get_label() for line in loss_ax.get_lines()] == ["training loss", "test loss"]
    assert list(loss_ax.get_lines()[1].get_xdata()) == [4, 8]
    assert accuracy_ax.get_ylabel() == "test accuracy" and list(accuracy_ax.get_lines()[0].get_ydata()) == [0.3, 0.5]
    with Image.open(tmp_path / "c.png") as img:
        assert img.format == "PNG"


@pytest.mark.slow  # ~10 s: a real 200-step Trainer run
def test_a_200_step_preset_run_draws_curves_not_single_points(tmp_path):
    """The presets' logging defaults (CURVE_DEFAULTS) in a real 200-step Trainer run: 100 training-loss points and
    10 evaluations in training_curves.png, where TrainingArguments' defaults drew one point per panel."""
    import torch
    from tiny import DigitsNet, digits
    from transformers import Trainer, TrainingArguments

    from mlrsnet_hf.experiments.presets import CURVE_DEFAULTS

    torch.manual_seed(0)
    data = digits(80)
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=200, per_device_train_batch_size=4, per_device_eval_batch_size=16,
        optim="sgd", learning_rate=0.05, report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
        **CURVE_DEFAULTS,
    )  # fmt: skip
    trainer = Trainer(model=DigitsNet(hidden=8), args=args, train_dataset=data[:64], eval_dataset=data[64:])
    trainer.train()
    trainer.evaluate()
    fig = plot_training_curves(trainer.state.log_history, tmp_path / "training_curves.png")
    (loss_ax,) = fig.axes
    train_line, eval_line = loss_ax.get_lines()
    assert len(train_line.get_xdata()) == 100 and len(eval_line.get_xdata()) == 10  # (the final eval at step 200)
