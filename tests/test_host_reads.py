"""Transfer mode reads nothing on the host between logging steps: no device synchronisation per step (issue 12).

Every ``Tensor.item`` / ``__float__`` / ``__int__`` / ``__bool__`` / ``tolist`` called from mlrsnet_hf code is
counted between ``on_step_begin`` and ``on_step_end`` (logging happens after ``on_step_end``). Stage entries
(the first step of each stage, which fixes gamma) and an LR controller's decisions may read; no other step may.
On a CPU the schedule steps in NumPy (reading a CPU tensor is free); these tests take the accelerator path.
"""

import sys

import pytest
import torch
from test_trainer import Recorder
from tiny import DigitsNet, digits
from transformers import Trainer, TrainerCallback, TrainingArguments

from mlrsnet_hf import LRController, MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer

COMMON = dict(
    max_steps=12, per_device_train_batch_size=16, logging_steps=4, report_to="none", save_strategy="no",
    disable_tqdm=True, use_cpu=True, seed=0, learning_rate=0.05, logging_nan_inf_filter=False,
)  # fmt: skip
READS = ("item", "__float__", "__int__", "__bool__", "tolist")


class HostReads(TrainerCallback):
    """Records the host reads made by mlrsnet_hf inside optimizer steps other than ``exempt``."""

    def __init__(self, exempt):
        self.exempt, self.active, self.step, self.reads = set(exempt), False, -1, []

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in READS}
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, self._counting(name, original))
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)

    def _counting(self, name, original):
        def read(tensor, *args, **kwargs):
            module = sys._getframe(1).f_globals.get("__name__", "")
            if self.active and module.startswith("mlrsnet_hf"):
                self.reads.append((self.step, module, name))
            return original(tensor, *args, **kwargs)

        return read

    def on_step_begin(self, args, state, control, **kwargs):
        self.step, self.active = state.global_step, state.global_step not in self.exempt

    def on_step_end(self, args, state, control, **kwargs):
        self.active = False


def schedule():
    torch.manual_seed(1)
    return MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=0.1)


def logged_lrs(trainer):
    return [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]


@pytest.mark.parametrize("optim", ["adamw_torch_fused", "sgd_fused"])
def test_mlrsnet_trainer_reads_nothing_between_stage_entries(tmp_path, optim):
    fused_sgd = optim == "sgd_fused"
    args = MLRSNetConfig(
        step_backend="tensor",  # the accelerator's step, on the CPU
        output_dir=str(tmp_path), **COMMON, gamma="relative" if not fused_sgd else 0.5,
        optim="sgd" if fused_sgd else optim,
    )  # fmt: skip
    model = DigitsNet()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, fused=True) if fused_sgd else None
    counter, recorder = HostReads(exempt={0, 6}), Recorder()
    trainer = MLRSNetTrainer(
        model=model, args=args, train_dataset=digits(400), schedule=schedule(), callbacks=[counter, recorder],
        optimizers=(optimizer, None),
    )  # fmt: skip
    with counter:
        trainer.train()
    assert trainer.lr_scheduler.tensor_lr
    assert counter.reads == []
    used = [lrs[0] for lrs in recorder.lrs]
    assert trainer.lr_scheduler.lr_history == used  # every step's LR reaches the host, at logging steps
    assert logged_lrs(trainer) == [used[3], used[7], used[11]]  # the logged LR is the LR used
    assert trainer.lr_scheduler.run.num_steps == 12 and trainer.lr_scheduler.run.last_lr == used[-1]


def test_an_optimizer_that_needs_a_number_costs_one_read_per_step(tmp_path):
    counter = HostReads(exempt={0, 6})
    args = MLRSNetConfig(
        optim="sgd", step_backend="tensor", output_dir=str(tmp_path), **COMMON, gamma=0.5
    )  # plain SGD: the LR is a number
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=digits(400), schedule=schedule(), callbacks=[counter]
    )
    with counter:
        trainer.train()
    assert not trainer.lr_scheduler.tensor_lr
    assert [(step, name) for step, _, name in counter.reads] == [(s, "item") for s in range(12) if s not in (0, 6)]


def test_the_callback_reads_nothing_either(tmp_path):
    counter, recorder = HostReads(exempt={0, 6}), Recorder()
    callback = MLRSNetCallback(schedule(), gamma="relative", step_backend="tensor")
    args = TrainingArguments(output_dir=str(tmp_path), optim="adamw_torch_fused", **COMMON)
    trainer = Trainer(
        model=DigitsNet(), args=args, train_dataset=digits(400), callbacks=[callback, counter, recorder],
        optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    with counter:
        trainer.train()
    assert counter.reads == []  # (the plain Trainer itself reads get_last_lr() after each step)
    assert logged_lrs(trainer) == [recorder.lrs[k][0] for k in (3, 7, 11)]


def test_an_lr_controller_reads_only_at_its_decisions(tmp_path):
    data = digits(500)
    counter = HostReads(exempt={0, 4, 8})
    controller = LRController(decision_interval=4, probe_size=20)
    args = MLRSNetConfig(optim="sgd", output_dir=str(tmp_path), **COMMON)
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=data[:400], meta_dataset=data[400:], schedule=controller,
        callbacks=[counter],
    )  # fmt: skip
    with counter:
        trainer.train()
    assert counter.reads == []


def test_device_steps_resume_exactly(tmp_path):
    def run(out, resume=None):
        torch.manual_seed(0)
        recorder = Recorder()
        args = MLRSNetConfig(
            step_backend="tensor",  # the accelerator's step, on the CPU
            output_dir=str(out),
            **{**COMMON, "save_strategy": "steps", "save_steps": 5},
            optim="adamw_torch_fused",
        )
        trainer = MLRSNetTrainer(
            model=DigitsNet(dropout=0.1), args=args, train_dataset=digits(400), schedule=schedule(),
            callbacks=[recorder],
        )  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return [lrs[0] for lrs in recorder.lrs], trainer

    lrs, full = run(tmp_path / "a")
    tail, resumed = run(tmp_path / "b", resume=str(tmp_path / "a" / "checkpoint-5"))
    assert tail == lrs[5:]
    assert torch.equal(full.lr_scheduler.run.state.h, resumed.lr_scheduler.run.state.h)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="device synchronisations exist only on a GPU")
def test_no_device_synchronisation_between_stage_entries_on_a_gpu(tmp_path, monkeypatch):
    """On a GPU the library's per-step code runs under ``torch.cuda.set_sync_debug_mode("error")``: any
    synchronising call (``.item()``, a host-device copy, ``nonzero``...) outside stage entries raises."""
    from mlrsnet_hf.loss_meter import LossMeter
    from mlrsnet_hf.mlrsnet.driver import MLRSNetDriver

    exempt, current = {0, 6}, {"step": 0}

    def guarded(original, step_of):
        def call(self, *args, **kwargs):
            step = step_of(self, *args)
            if step is not None:
                current["step"] = step
            if current["step"] in exempt:
                return original(self, *args, **kwargs)
            torch.cuda.set_sync_debug_mode("error")
            try:
                return original(self, *args, **kwargs)
            finally:
                torch.cuda.set_sync_debug_mode("default")

        return call

    monkeypatch.setattr(MLRSNetDriver, "prepare_step", guarded(MLRSNetDriver.prepare_step, lambda self, step: step))
    monkeypatch.setattr(MLRSNetDriver, "step", guarded(MLRSNetDriver.step, lambda self: None))
    monkeypatch.setattr(LossMeter, "record", guarded(LossMeter.record, lambda self, *a: None))
    recorder = Recorder()
    args = MLRSNetConfig(
        step_backend="tensor",  # the accelerator's step, on the CPU
        output_dir=str(tmp_path),
        **{**COMMON, "use_cpu": False},
        gamma="relative",
        optim="adamw_torch_fused",
    )
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=digits(400), schedule=schedule(), callbacks=[recorder]
    )
    trainer.train()
    assert trainer.lr_scheduler.tensor_lr and trainer.args.device.type == "cuda"
    used = [float(lrs[0]) for lrs in recorder.lrs]
    assert trainer.lr_scheduler.lr_history == used
    assert logged_lrs(trainer) == [used[3], used[7], used[11]]


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "capturable"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_tensor_lr_has_the_dtype_the_optimizer_reads(fused, dtype):
    """Fused kernels read a float32 LR whatever the parameters' dtype; capturable Adam computes in theirs."""
    from mlrsnet_hf.optimizers import tensor_lr_dtype

    device = "cuda" if torch.cuda.is_available() else "cpu"
    params = [torch.nn.Parameter(torch.ones(3, dtype=dtype, device=device))]
    flags = {"fused": True} if fused else {"capturable": True}
    optimizer = torch.optim.AdamW(params, lr=1e-3, **flags)
    lr_dtype = tensor_lr_dtype(optimizer)
    assert lr_dtype == (torch.float64 if dtype == torch.float64 and not fused else torch.float32)
    if device == "cuda":  # the kernel takes it (on a CPU a plain number is handed over anyway)
        optimizer.param_groups[0]["lr"] = torch.tensor(1e-3, dtype=lr_dtype, device=device)
        params[0].grad = torch.ones_like(params[0])
        optimizer.step()
        assert torch.all(params[0] < 1)


def test_the_online_scale_reads_nothing_either(tmp_path):
    """online_scale="mechanic": S, its tuner and the LR it logs stay on the device between logging steps."""
    args = MLRSNetConfig(
        step_backend="tensor", output_dir=str(tmp_path), **COMMON, optim="adamw_torch_fused", online_scale="mechanic"
    )
    counter, recorder = HostReads(exempt={0, 6}), Recorder()
    trainer = MLRSNetTrainer(
        model=DigitsNet(), args=args, train_dataset=digits(400), schedule=schedule(), callbacks=[counter, recorder]
    )
    with counter:
        trainer.train()
    assert counter.reads == []
    history = trainer.lr_scheduler.lr_history
    assert len(history) == 12 and logged_lrs(trainer) == [history[3], history[7], history[11]]
    assert history != [lrs[0] for lrs in recorder.lrs]  # the recorder sees the shape; S * shape was applied
