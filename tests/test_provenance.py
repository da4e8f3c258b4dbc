"""Provenance: a model trained with a learned schedule carries the library's tags and a ``schedule:`` reference."""

from types import SimpleNamespace

import pytest
import torch
from conftest import hf_cache_snapshot
from huggingface_hub import ModelCard
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

from mlrsnet_hf import LRController, MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
from mlrsnet_hf.provenance import schedule_reference

COMMON = dict(
    max_steps=3, per_device_train_batch_size=4, report_to="none", save_strategy="no", disable_tqdm=True,
    use_cpu=True, seed=0, learning_rate=0.01,
)  # fmt: skip
MLRSNET_TAGS = ["mlrsnet_hf", "learned-lr-schedule", "mlrsnet"]
CONTROLLER_TAGS = ["mlrsnet_hf", "learned-lr-schedule", "lr-controller"]


def tiny_lm() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(
        GPT2Config(vocab_size=50, n_positions=16, n_embd=16, n_layer=1, n_head=2, bos_token_id=0, eos_token_id=0)
    )


def tokens(n: int = 32) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": (ids := torch.randint(0, 50, (8,), generator=g)), "labels": ids} for _ in range(n)]


def metadata(out) -> dict:
    return ModelCard.load(out / "README.md").data.to_dict()


@pytest.fixture
def schedule_dir(tmp_path):
    torch.manual_seed(0)
    MLRSNetSchedule(hidden_size=4, gamma=0.01).save_pretrained(tmp_path / "schedule")
    return tmp_path / "schedule"


def test_the_trainers_card_has_the_tags_and_the_local_schedule(schedule_dir, tmp_path):
    out = tmp_path / "out"
    trainer = MLRSNetTrainer(
        model=tiny_lm(), args=MLRSNetConfig(optim="sgd", output_dir=str(out), **COMMON), train_dataset=tokens(),
        schedule=str(schedule_dir),
    )  # fmt: skip
    assert trainer.model.model_tags == MLRSNET_TAGS  # tagged at construction, as TRL does
    trainer.train()
    trainer.create_model_card(tags="my-tag")
    data = metadata(out)
    assert data["tags"] == ["my-tag", *MLRSNET_TAGS, "generated_from_trainer"]
    assert data["schedule"] == {"model_type": "mlrsnet_schedule", "mode": "transfer", "path": str(schedule_dir)}
    assert data["model-index"][0]["name"] == "out"  # transformers' own card is kept


def test_a_meta_trained_schedule_built_in_code_has_no_source(tmp_path):
    out = tmp_path / "out"
    args = MLRSNetConfig(
        optim="sgd", output_dir=str(out), meta_train=True, meta_update_interval=2, gamma=0.01, **COMMON
    )
    data = tokens()
    trainer = MLRSNetTrainer(model=tiny_lm(), args=args, train_dataset=data[:24], meta_dataset=data[24:])
    trainer.train()
    trainer.create_model_card()
    card = metadata(out)
    assert card["tags"] == [*MLRSNET_TAGS, "generated_from_trainer"]
    assert card["schedule"] == {"model_type": "mlrsnet_schedule", "mode": "meta-train"}  # nothing to point to


def test_a_meta_trained_schedule_is_referenced_where_the_trainer_saved_it(schedule_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoUrl

    out = tmp_path / "out"
    args = MLRSNetConfig(
        optim="sgd", output_dir=str(out), meta_train=True, meta_update_interval=2, gamma=0.01, **COMMON
    )
    data = tokens()
    trainer = MLRSNetTrainer(
        model=tiny_lm(), args=args, train_dataset=data[:24], meta_dataset=data[24:], schedule=str(schedule_dir)
    )
    trainer.train()
    trainer.save_schedule(tmp_path / "learned")
    trainer.create_model_card()
    assert metadata(out)["schedule"] == {
        "model_type": "mlrsnet_schedule", "mode": "meta-train", "path": str(schedule_dir),  # where it started
        "saved_to": {"path": str(tmp_path / "learned")},
    }  # fmt: skip
    commit = SimpleNamespace(oid="fedcba9876543210fedcba9876543210fedcba98")
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: commit)
    trainer.push_schedule_to_hub("org/learned")
    trainer.create_model_card()
    assert metadata(out)["schedule"]["saved_to"] == {"repo_id": "org/learned", "revision": commit.oid}


def test_an_lr_controller_is_referenced_with_its_family(tmp_path):
    LRController(decision_interval=2, probe_size=8).save_pretrained(tmp_path / "controller")
    out = tmp_path / "out"
    data = tokens()
    trainer = MLRSNetTrainer(
        model=tiny_lm(), args=MLRSNetConfig(optim="sgd", output_dir=str(out), **COMMON), train_dataset=data[:24],
        meta_dataset=data[24:], schedule=str(tmp_path / "controller"),
    )  # fmt: skip
    trainer.train()
    trainer.create_model_card()
    card = metadata(out)
    assert card["tags"] == [*CONTROLLER_TAGS, "generated_from_trainer"]
    assert card["schedule"] == {
        "model_type": "lr_controller",
        "mode": "transfer",
        "path": str(tmp_path / "controller"),
    }


@pytest.mark.parametrize("family", ["mlrsnet", "controller"])
def test_a_plain_trainer_with_the_callback(family, schedule_dir, tmp_path):
    out = tmp_path / "out"
    data = tokens()
    if family == "mlrsnet":
        callback, tags = MLRSNetCallback(str(schedule_dir), gamma=0.01), MLRSNET_TAGS
        reference = {"model_type": "mlrsnet_schedule", "mode": "transfer", "path": str(schedule_dir)}
    else:
        callback = MLRSNetCallback(LRController(decision_interval=2, probe_size=8), probe_dataset=data[24:])
        tags, reference = CONTROLLER_TAGS, {"model_type": "lr_controller", "mode": "transfer"}
    model = tiny_lm()
    trainer = Trainer(
        model=model, args=TrainingArguments(output_dir=str(out), **COMMON), train_dataset=data[:24],
        callbacks=[callback], optimizers=(None, callback.lr_scheduler),
    )  # fmt: skip
    trainer.train()
    assert model.model_tags == tags  # added when the run starts
    trainer.create_model_card()
    assert "schedule" not in metadata(out)  # transformers' card reads neither the model's tags nor the callback
    callback.update_model_card(out)
    card = metadata(out)
    assert card["tags"] == ["generated_from_trainer", *tags] and card["schedule"] == reference


@pytest.mark.parametrize("trainer_class", ["MLRSNetTrainer", "Trainer"])
def test_push_to_hub_uploads_the_tags(trainer_class, schedule_dir, tmp_path, monkeypatch):
    """Trainer.push_to_hub puts model.model_tags in the card it uploads (the Hub replaced by a recorder);
    MLRSNetTrainer's card has the schedule reference too."""
    import transformers.trainer

    uploaded = {}

    def upload_folder(folder_path, **kwargs):
        uploaded["card"] = ModelCard.load(f"{folder_path}/README.md").data.to_dict()

    api = SimpleNamespace(create_repo=lambda *a, **k: SimpleNamespace(repo_id="me/out"), upload_folder=upload_folder)
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: api)
    out = tmp_path / "out"
    if trainer_class == "MLRSNetTrainer":
        args = MLRSNetConfig(optim="sgd", output_dir=str(out), **COMMON)
        trainer = MLRSNetTrainer(model=tiny_lm(), args=args, train_dataset=tokens(), schedule=str(schedule_dir))
    else:
        callback = MLRSNetCallback(str(schedule_dir), gamma=0.01)
        trainer = Trainer(
            model=tiny_lm(), args=TrainingArguments(output_dir=str(out), **COMMON), train_dataset=tokens(),
            callbacks=[callback], optimizers=(None, callback.lr_scheduler),
        )  # fmt: skip
    trainer.train()
    trainer.push_to_hub()
    assert uploaded["card"]["tags"] == [*MLRSNET_TAGS, "generated_from_trainer"]
    if trainer_class == "MLRSNetTrainer":
        assert uploaded["card"]["schedule"] == {
            "model_type": "mlrsnet_schedule",
            "mode": "transfer",
            "path": str(schedule_dir),
        }
    else:  # transformers writes a new card in push_to_hub: the reference needs callback.update_model_card + upload
        assert "schedule" not in uploaded["card"]


def test_a_hub_schedule_is_referenced_by_repo_id_and_commit(schedule_dir, tmp_path):
    # The HF cache layout that `hf download org/schedule` leaves behind, loaded without the network.
    commit = hf_cache_snapshot(schedule_dir, tmp_path / "hub", "org/schedule")
    schedule = MLRSNetSchedule.from_pretrained("org/schedule", cache_dir=tmp_path / "hub", local_files_only=True)
    assert schedule_reference(schedule) == {
        "model_type": "mlrsnet_schedule", "mode": "transfer", "repo_id": "org/schedule", "revision": commit,
    }  # fmt: skip
    assert schedule_reference(MLRSNetSchedule()) == {"model_type": "mlrsnet_schedule", "mode": "transfer"}


def test_a_zoo_schedule_is_referenced_by_its_zoo_name_and_the_library_version():
    import mlrsnet_hf

    schedule = MLRSNetSchedule.from_pretrained("mlrsnet_hf/mnist1d-cnn-600")
    assert schedule_reference(schedule) == {
        "model_type": "mlrsnet_schedule", "mode": "transfer", "zoo": "mlrsnet_hf/mnist1d-cnn-600",
        "library_version": mlrsnet_hf.__version__,
    }  # fmt: skip
