import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import hf_cache_snapshot
from huggingface_hub import HfApi, ModelCard
from PIL import Image
from safetensors.torch import load_file, save_file

from mlrsnet_hf import MLRSNetSchedule, ScheduleFileError
from mlrsnet_hf.repo_files import read_weights_metadata

FILES = {"config.json", "model.safetensors", "README.md", "lr_response.png"}


@pytest.fixture
def schedule() -> MLRSNetSchedule:
    torch.manual_seed(0)
    return MLRSNetSchedule(
        hidden_size=20,
        num_stages=3,
        gamma="auto",
        meta_training={
            "name": "mlrsnet-digits-cnn",
            "dataset": "sklearn/digits",
            "model": "SmallCNN",
            "epochs": 30,
            "optimizer": "SGD",
            "num_classes": 10,
            "results": {"accuracy": 0.97},
        },
    )


@pytest.fixture
def repo(schedule, tmp_path) -> Path:
    out = tmp_path / "repo"
    schedule.save_pretrained(out)
    return out


def test_files_and_exact_round_trip(schedule, repo):
    assert {p.name for p in repo.iterdir()} == FILES
    loaded = MLRSNetSchedule.from_pretrained(repo)
    assert loaded.config == schedule.config
    for key, value in schedule.weights().items():
        assert torch.equal(loaded.weights()[key], value), key  # bit-exact
    assert set(load_file(repo / "model.safetensors")) == set(schedule.weights())
    config = json.loads((repo / "config.json").read_text())
    assert config["model_type"] == "mlrsnet_schedule"
    assert config["library_version"] == __import__("mlrsnet_hf").__version__
    assert config["gate_layout"] == "ifgo" and config["stage_starts"] == pytest.approx([0, 1 / 3, 2 / 3])
    assert config["meta_training"]["dataset"] == "sklearn/digits"
    losses = [2.3, 1.9, 1.2, 0.8, 0.4]
    assert torch.equal(loaded.unroll(losses, stage=2), schedule.unroll(losses, stage=2))


def test_model_card_metadata_and_picture(repo):
    card = ModelCard.load(repo / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "mlrsnet_hf"
    assert {"mlrsnet", "learning-rate-schedule"} <= set(data["tags"])
    assert data["datasets"] == ["sklearn/digits"]
    result = data["model-index"][0]["results"][0]
    assert result["dataset"]["type"] == "sklearn/digits"
    assert result["metrics"][0] == {"type": "accuracy", "value": 0.97}
    assert "![" in card.text and "(lr_response.png)" in card.text
    assert "| stages | 3 |" in card.text and "SmallCNN" in card.text
    with Image.open(repo / "lr_response.png") as img:
        assert img.format == "PNG" and img.size[0] > 300 and img.size[1] > 200


def test_card_without_results_has_no_model_index(tmp_path):
    MLRSNetSchedule().save_pretrained(tmp_path / "fresh")
    data = ModelCard.load(tmp_path / "fresh" / "README.md").data.to_dict()
    assert data["library_name"] == "mlrsnet_hf" and "model-index" not in data


def test_overrides_and_unknown_options(repo):
    assert MLRSNetSchedule.from_pretrained(repo, gamma=0.1).gamma == 0.1
    with pytest.raises(TypeError, match="Unknown schedule options \\['gama'\\]"):
        MLRSNetSchedule.from_pretrained(repo, gama=0.1)


@pytest.mark.parametrize("name", ["config.json", "model.safetensors"])
def test_missing_file_is_named(repo, name):
    (repo / name).unlink()
    with pytest.raises(ScheduleFileError, match=f"{name} is missing"):
        MLRSNetSchedule.from_pretrained(repo)


def test_truncated_and_corrupted_weights(repo):
    weights = repo / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScheduleFileError, match="model.safetensors is truncated or corrupted"):
        MLRSNetSchedule.from_pretrained(repo)
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ScheduleFileError, match="model.safetensors is truncated or corrupted"):
        MLRSNetSchedule.from_pretrained(repo)


def test_config_weights_mismatch(repo):
    config_path = repo / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "hidden_size": 30}))
    with pytest.raises(ScheduleFileError, match=r"does not match .*config.json.*shape mismatch"):
        MLRSNetSchedule.from_pretrained(repo)
    config_path.write_text(json.dumps({**config, "num_stages": 2, "stage_starts": [0.0, 0.5]}))
    with pytest.raises(ScheduleFileError, match=r"unexpected \['stages.2"):
        MLRSNetSchedule.from_pretrained(repo)
    config_path.write_text(json.dumps({**config, "num_stages": 4, "stage_starts": None}))
    with pytest.raises(ScheduleFileError, match=r"missing \['stages.3"):
        MLRSNetSchedule.from_pretrained(repo)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"gate_layout": "xyzw"}, "config.json does not describe a valid schedule: Unknown gate_layout 'xyzw'"),
        ({"warmup": 3}, r"config.json has unknown fields \['warmup'\]"),
        ({"model_type": "bert"}, "model_type 'bert'"),
    ],
)
def test_bad_config_fields(repo, edit, message):
    config_path = repo / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **edit}))
    with pytest.raises(ScheduleFileError, match=message):
        MLRSNetSchedule.from_pretrained(repo)


def test_invalid_json(repo):
    (repo / "config.json").write_text("{not json")
    with pytest.raises(ScheduleFileError, match="config.json is not valid JSON"):
        MLRSNetSchedule.from_pretrained(repo)


def test_not_a_directory_nor_repo_id(tmp_path):
    with pytest.raises(ScheduleFileError, match="No such directory"):  # a path: no Hub lookup
        MLRSNetSchedule.from_pretrained(str(tmp_path / "no" / "such" / "dir"))
    with pytest.raises(ScheduleFileError, match="not a local directory, not a zoo schedule and not a Hub repo id"):
        MLRSNetSchedule.from_pretrained("not a repo id")
    with pytest.raises(ScheduleFileError, match="nor a zoo schedule, nor a valid Hub repo id"):
        MLRSNetSchedule.from_pretrained("not an/id")


def test_save_is_atomic_and_keeps_other_files(schedule, tmp_path, monkeypatch):
    out = tmp_path / "repo"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("# My own card\n\nhand-written")
    schedule.save_pretrained(out)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "README.md").read_text() == "# My own card\n\nhand-written"  # a foreign card is kept
    assert {p.name for p in out.iterdir()} >= FILES
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    # A failure during saving leaves the existing repo untouched and no temporary directory behind.
    import mlrsnet_hf.mlrsnet.plotting

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(mlrsnet_hf.mlrsnet.plotting, "plot_lr_response", boom)
    with torch.no_grad():
        schedule.stages[0].head.bias.add_(1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        schedule.save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_our_card_is_regenerated(schedule, repo):
    schedule.meta_training["results"] = {"accuracy": 0.99}
    schedule.save_pretrained(repo)
    assert "0.99" in (repo / "README.md").read_text()


def test_save_refuses_a_file_path(schedule, tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(NotADirectoryError):
        schedule.save_pretrained(target)
    assert target.read_text() == "x"


@pytest.mark.parametrize("family", ["mlrsnet", "controller"])
def test_push_to_hub_uploads_the_repo(schedule, monkeypatch, family):
    if family == "controller":
        from mlrsnet_hf import LRController

        schedule = LRController(training_run={"task": "digits"})
    uploaded = {}

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub.hf_api import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = {p.name for p in Path(folder_path).iterdir()}
        uploaded["card"] = (Path(folder_path) / "README.md").read_text()
        return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    schedule.push_to_hub("org/mlrsnet-digits")
    assert uploaded["repo_id"] == "org/mlrsnet-digits"
    assert uploaded["files"] == FILES
    assert "library_name: mlrsnet_hf" in uploaded["card"]
    assert ("Learning an Adaptive Learning Rate Schedule" in uploaded["card"]) == (family == "controller")


OFFLINE_SCRIPT = """
import sys
from mlrsnet_hf import MLRSNetSchedule, ScheduleFileError
from mlrsnet_hf.repo_files import read_weights_metadata
s = MLRSNetSchedule.from_pretrained("org/mlrsnet-digits")
print("loaded", s.num_stages, s.meta_training["dataset"])
try:
    MLRSNetSchedule.from_pretrained("org/not-cached")
except ScheduleFileError as e:
    print("error:", e)
"""


def test_offline_loading_from_the_hf_cache(repo, tmp_path):
    # The HF cache layout that `hf download org/mlrsnet-digits` leaves behind.
    hf_cache_snapshot(repo, tmp_path / "hub", "org/mlrsnet-digits")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "loaded 3 sklearn/digits" in out.stdout
    assert "error: Cannot download config.json of schedule 'org/not-cached'" in out.stdout
    assert "(HF_HUB_OFFLINE=1 is set)" in out.stdout
    assert "hf download org/not-cached" in out.stdout


def test_a_config_edited_by_hand_is_used(repo):
    config_path = repo / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "gamma": 0.25}))
    assert MLRSNetSchedule.from_pretrained(repo).gamma == 0.25  # not the config embedded in the weights


@pytest.mark.parametrize("family", ["mlrsnet", "controller"])
def test_card_metadata_is_what_the_class_declares(family, tmp_path):
    from mlrsnet_hf import LRController

    cls = MLRSNetSchedule if family == "mlrsnet" else LRController
    cls().save_pretrained(tmp_path / "repo")
    card = ModelCard.load(tmp_path / "repo" / "README.md")
    declared = cls._hub_mixin_info.model_card_data
    assert card.data.to_dict()["tags"] == declared.tags  # exactly: none added, none dropped
    expected_tags = {
        "mlrsnet": {"mlrsnet", "learning-rate-schedule", "meta-learning"},
        "controller": {"learning-rate-schedule", "lr-controller", "ppo", "reinforcement-learning"},
    }[family]
    assert set(declared.tags) == expected_tags | {"model_hub_mixin", "pytorch_model_hub_mixin"}
    assert card.data.library_name == declared.library_name == "mlrsnet_hf"
    assert card.data.license == declared.license == "apache-2.0"
    assert f"]({cls._hub_mixin_info.paper_url})" in card.text


def test_lr_history_adds_the_picture_of_the_lrs_used(schedule, tmp_path):
    schedule.save_pretrained(tmp_path / "repo", model_card_kwargs={"lr_history": [0.1, 0.08, 0.05, 0.02]})
    assert {p.name for p in (tmp_path / "repo").iterdir()} == FILES | {"lr_used.png"}
    assert "](lr_used.png)" in (tmp_path / "repo" / "README.md").read_text()


class Killed(BaseException):
    """A kill -9 in the middle of a save: no except clause catches it; the finally clauses are disabled below."""


def make_schedule(family: str, seed: int):
    from mlrsnet_hf import LRController

    torch.manual_seed(seed)
    if family == "mlrsnet":
        return MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=0.5 + seed, meta_training={"name": f"s{seed}"})
    controller = LRController(max_change=0.05 * (seed + 1), training_run={"seed": seed})
    with torch.no_grad():
        controller.obs_var.fill_(seed + 1.0)
    return controller


def same_schedule(a, b) -> bool:
    return (
        a.config == b.config
        and a.weights().keys() == b.weights().keys()
        and all(torch.equal(v, b.weights()[k]) for k, v in a.weights().items())
    )


@pytest.mark.parametrize("family", ["mlrsnet", "controller"])
@pytest.mark.parametrize("existing", [True, False], ids=["over-a-repo", "new-directory"])
def test_a_killed_save_leaves_the_old_or_the_new_repo(family, existing, tmp_path, monkeypatch, caplog):
    import mlrsnet_hf.repo_writing as repo_writing

    old, new = make_schedule(family, 0), make_schedule(family, 1)
    cls = type(new)
    real_replace = os.replace
    seen = []
    for k in range(1, 20):
        out = tmp_path / f"kill-at-{k}" / "repo"
        if existing:
            old.save_pretrained(out)
        else:
            out.parent.mkdir()
        calls = []

        def replace(src, dst, k=k, calls=calls):
            calls.append(dst)
            if len(calls) == k:
                raise Killed
            real_replace(src, dst)

        caplog.clear()
        with monkeypatch.context() as m:
            m.setattr(repo_writing.os, "replace", replace)
            m.setattr(
                repo_writing.shutil, "rmtree", lambda *args, **kwargs: None
            )  # a killed process cleans nothing up
            try:
                new.save_pretrained(out, model_card_kwargs={"lr_history": [0.1, 0.05, 0.02]})
                killed = False
            except Killed:
                killed = True
        if killed:  # the simulated kill left its temporary directory, as a real one would
            assert len(list(out.parent.glob(".repo.tmp-*"))) == 1

        if not out.exists():
            assert not existing and killed
            seen.append("none")
        else:
            loaded = cls.from_pretrained(out)
            if same_schedule(loaded, new):
                seen.append("new")
            else:
                assert existing and same_schedule(loaded, old), f"kill at rename {k}: a mixed repo"
                seen.append("old")
            if "is stale" in caplog.text:
                assert f"{out / 'config.json'} is stale" in caplog.text and seen[-1] == "new"

        # The next save repairs the directory and removes what the killed one left.
        new.save_pretrained(out)
        assert not list(out.parent.glob(".repo.tmp-*"))
        assert same_schedule(cls.from_pretrained(out), new)
        if not killed:
            break
    # Over a repo: weights, config.json, README.md, lr_response.png, lr_used.png, then no kill; else one rename.
    assert seen == (["old", "new", "new", "new", "new", "new"] if existing else ["none", "new"])


def test_the_stale_config_is_named_once_and_repaired(tmp_path, monkeypatch, caplog):
    import mlrsnet_hf.repo_writing as repo_writing

    old, new = make_schedule("mlrsnet", 0), make_schedule("mlrsnet", 1)
    out = tmp_path / "repo"
    old.save_pretrained(out)
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst).name == "config.json":
            raise Killed
        real_replace(src, dst)

    with monkeypatch.context() as m:
        m.setattr(repo_writing.os, "replace", replace)
        m.setattr(repo_writing.shutil, "rmtree", lambda *args, **kwargs: None)
        with pytest.raises(Killed):
            new.save_pretrained(out)
    with caplog.at_level("WARNING", logger="mlrsnet_hf.repo_files"):
        assert same_schedule(MLRSNetSchedule.from_pretrained(out), new)
    assert f"{out / 'config.json'} is stale" in caplog.text
    new.save_pretrained(out)
    caplog.clear()
    with caplog.at_level("WARNING", logger="mlrsnet_hf.repo_files"):
        MLRSNetSchedule.from_pretrained(out)
    assert "stale" not in caplog.text and not list(tmp_path.glob(".repo.tmp-*"))


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_controller_with_unusable_obs_var_is_refused(bad, tmp_path):
    from mlrsnet_hf import LRController

    controller = LRController()
    with torch.no_grad():
        controller.obs_var[2] = bad
    with pytest.raises(ValueError, match="Cannot save this LRController: from_pretrained would refuse it.*obs_var"):
        controller.save_pretrained(tmp_path / "controller")  # a save refuses what a load would refuse
    assert not (tmp_path / "controller").exists()
    LRController().save_pretrained(tmp_path / "controller")  # then the same values, written by another tool
    weights = tmp_path / "controller" / "model.safetensors"
    tensors, metadata = load_file(weights), read_weights_metadata(weights)
    tensors["obs_var"][2] = bad
    save_file(tensors, weights, metadata={k: v for k, v in metadata.items() if k != "weights_sha256"})
    with pytest.raises(ScheduleFileError, match=r"model\.safetensors .*obs_var"):
        LRController.from_pretrained(tmp_path / "controller")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"obs_clip": -1.0}, "obs_clip must be a positive number"),
        ({"obs_epsilon": 0.0}, "obs_epsilon must be a positive number"),
        ({"hidden_sizes": [-1]}, "hidden_sizes must be an integer from 1 to 512, got -1"),
        ({"decision_interval": 1.5}, "decision_interval must be an integer >= 1"),
    ],
)
def test_controller_config_checks_name_the_file(edit, message, tmp_path):
    from mlrsnet_hf import LRController

    LRController().save_pretrained(tmp_path / "controller")
    config_path = tmp_path / "controller" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), **edit}))
    with pytest.raises(ScheduleFileError, match=f"config.json does not describe a valid schedule: {message}"):
        LRController.from_pretrained(tmp_path / "controller")


def test_load_any_schedule_dispatches_through_the_registry(repo, tmp_path, monkeypatch):
    import mlrsnet_hf.hub as hub
    from mlrsnet_hf import LRController

    assert {"mlrsnet_schedule": MLRSNetSchedule, "lr_controller": LRController}.items() <= (
        hub.registered_schedule_types().items()
    )
    assert isinstance(hub.load_any_schedule(repo), MLRSNetSchedule)
    config_path = repo / "config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({k: v for k, v in config.items() if k != "model_type"}))
    assert isinstance(hub.load_any_schedule(repo), MLRSNetSchedule)  # the default family
    config_path.write_text(json.dumps({**config, "model_type": "bert"}))
    with pytest.raises(
        ScheduleFileError, match=r"model_type 'bert'.*registered: \['lr_controller', 'mlrsnet_schedule'"
    ):
        hub.load_any_schedule(repo)

    monkeypatch.setattr(hub, "_SCHEDULE_TYPES", dict(hub._SCHEDULE_TYPES))
    with pytest.raises(ValueError, match="already registered"):
        hub.register_schedule_type(type("Impostor", (), {"model_type": "mlrsnet_schedule"}))
    with pytest.raises(TypeError, match="model_type"):
        hub.register_schedule_type(type("Nameless", (), {}))


BACKEND_SCRIPT = """
import sys, tempfile
import matplotlib
import mlrsnet_hf
d = tempfile.mkdtemp()
mlrsnet_hf.MLRSNetSchedule().save_pretrained(d + "/s", model_card_kwargs={"lr_history": [0.1, 0.05]})
mlrsnet_hf.LRController().save_pretrained(d + "/c")
print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
print(matplotlib.get_backend())
"""


def test_saving_leaves_matplotlib_alone(tmp_path):
    env = {**os.environ, "MPLBACKEND": "svg", "MPLCONFIGDIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", BACKEND_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["no", "pyplot", "svg"]


def test_a_new_repo_directory_gets_the_usual_permissions(tmp_path):
    import os
    import stat

    from mlrsnet_hf import MLRSNetSchedule

    umask = os.umask(0o022)
    try:
        MLRSNetSchedule(hidden_size=4).save_pretrained(tmp_path / "new")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o755
