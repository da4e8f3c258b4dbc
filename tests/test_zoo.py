"""The schedule zoo (schedules shipped in the package, loadable offline by name), how a schedule argument is
resolved (local directory, then zoo, then Hub), and what happens when the Hub cannot be reached (downloads and
uploads), with ``huggingface_hub`` mocked at its boundary: nothing here touches the network."""

import json
import os
import stat
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard

import mlrsnet_hf.repo_files as repo_files
from mlrsnet_hf import HubUnreachableError, LRController, MLRSNetSchedule, ScheduleFileError, zoo_names
from mlrsnet_hf.hub import load_any_schedule
from mlrsnet_hf.zoo import ZOO_DIR
from mlrsnet_hf.zoo.publish import hub_repo_id, main, publish_zoo

ZOO = [
    "mlrsnet_hf/digits-cnn-600",
    "mlrsnet_hf/mnist1d-cnn-600",
    "mlrsnet_hf/ptb-gpt2-200",
    "mlrsnet_hf/ptb-lstm-200",
    "mlrsnet_hf/regression-mlp-600",
]


class ConnectError(Exception):
    """Named as the HTTP client's own class (httpx's ConnectError): what a download or upload raises offline."""


@pytest.fixture
def no_hub(monkeypatch):
    """Every Hub call fails the test: loading a zoo schedule must not ask the Hub."""

    def refuse(*args, **kwargs):
        raise AssertionError("the Hub was asked")

    for target in ("hf_hub_download", "get_hf_file_metadata"):
        monkeypatch.setattr(repo_files, target, refuse)
        monkeypatch.setattr(huggingface_hub, target, refuse)


def test_the_zoo_ships_five_schedules_that_load_offline_through_the_checks(no_hub, monkeypatch):
    assert zoo_names() == ZOO
    checked = []
    real = repo_files.check_header
    monkeypatch.setattr(repo_files, "check_header", lambda *a: checked.append(1) or real(*a))
    for name in ZOO:
        schedule = MLRSNetSchedule.from_pretrained(name)
        assert schedule.name_or_path == name and schedule.num_stages == 3
        assert load_any_schedule(name).config == schedule.config
    assert len(checked) == 2 * len(ZOO)  # the same header check as any repo
    with pytest.raises(ScheduleFileError, match="is for model_type 'mlrsnet_schedule'"):
        LRController.from_pretrained(ZOO[0])


def test_each_zoo_card_states_task_budget_optimizer_and_its_benchmark_rows():
    for name in ZOO:
        directory = ZOO_DIR / name.removeprefix("mlrsnet_hf/")
        assert {p.name for p in directory.iterdir()} == {
            "config.json",
            "model.safetensors",
            "README.md",
            "lr_response.png",
        }
        assert sum(p.stat().st_size for p in directory.iterdir()) < 300_000  # small files only
        record = json.loads((directory / "config.json").read_text())["meta_training"]
        card = (directory / "README.md").read_text()
        assert ModelCard.load(directory / "README.md").data.library_name == "mlrsnet_hf"
        assert f'from_pretrained("{name}")' in card
        for field in ("task", "budget", "optimizer"):
            assert f"| {field} | {record[field]} |" in card
        assert "## Benchmark" in card and record["benchmark"]["rows"]
        for row in record["benchmark"]["rows"]:
            assert f"| {row['task']} | {row['metric']} | {row['row']} | {row['score']} | {row['best_tuned']} |" in card
    digits = json.loads((ZOO_DIR / "digits-cnn-600" / "config.json").read_text())["meta_training"]
    scored = {(r["task"], r["row"]): r["score"] for r in digits["benchmark"]["rows"]}
    assert scored["mnist1d-cnn", "MLR-SNet transferred, trajectory"] == "0.7250 ± 0.0422"  # quality_cpu.md
    assert scored["ptb-lstm", "MLR-SNet transferred, trajectory"] == "591.2 ± 40.2"


def test_a_local_directory_wins_over_the_zoo_name_it_shadows(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    MLRSNetSchedule(hidden_size=4, gamma=0.5).save_pretrained(tmp_path / "mlrsnet_hf" / "digits-cnn-600")
    with caplog.at_level("WARNING"):
        local = MLRSNetSchedule.from_pretrained("mlrsnet_hf/digits-cnn-600")
    assert local.hidden_size == 4 and "not the zoo schedule of the same name" in caplog.text
    monkeypatch.chdir(ZOO_DIR.parent.parent)  # the repository root holds mlrsnet_hf/, but not the zoo name
    assert MLRSNetSchedule.from_pretrained("mlrsnet_hf/digits-cnn-600").hidden_size == 50


def test_a_name_under_the_zoo_prefix_that_the_zoo_lacks_is_never_looked_up_on_the_hub(no_hub):
    with pytest.raises(ScheduleFileError) as error:
        MLRSNetSchedule.from_pretrained("mlrsnet_hf/cifar10-200")
    assert str(error.value) == (
        "'mlrsnet_hf/cifar10-200' is not a local directory, and the schedule zoo shipped with mlrsnet_hf has no "
        f"such name (no Hub repo is looked up under 'mlrsnet_hf/'). The zoo: {', '.join(ZOO)}."
    )


def test_a_bare_word_fails_at_once_naming_what_was_tried(no_hub):
    start = time.perf_counter()
    with pytest.raises(ScheduleFileError) as error:
        MLRSNetSchedule.from_pretrained("myschedule")
    assert time.perf_counter() - start < 1
    assert str(error.value) == (
        "'myschedule' is not a local directory, not a zoo schedule and not a Hub repo id ('org/name'), so nothing "
        f"was downloaded. The schedule zoo shipped with mlrsnet_hf: {', '.join(ZOO)}."
    )
    with pytest.raises(ScheduleFileError, match="Did you mean the zoo schedule 'mlrsnet_hf/digits-cnn-600'"):
        MLRSNetSchedule.from_pretrained("digits-cnn-600")


def test_a_hub_id_with_the_hub_unreachable_fails_after_one_request(monkeypatch):
    calls = []

    def metadata(url, **kwargs):
        calls.append((url, kwargs.get("retry_on_errors")))
        raise ConnectError("[Errno -2] Name or service not known")

    def cached_only(repo_id, filename, **kwargs):
        assert kwargs.get("local_files_only"), "a download with retries was started"
        raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")

    monkeypatch.setattr(repo_files, "get_hf_file_metadata", metadata)
    monkeypatch.setattr(repo_files, "hf_hub_download", cached_only)
    with pytest.raises(HubUnreachableError) as error:
        MLRSNetSchedule.from_pretrained("org/mlrsnet-cifar10")
    assert len(calls) == 1 and calls[0][1] is False  # one request, no retries
    message = str(error.value)
    assert message.startswith(
        "Cannot download config.json of schedule 'org/mlrsnet-cifar10': the Hugging Face Hub "
        "(https://huggingface.co) cannot be reached (ConnectError: [Errno -2] Name or service not known). It is "
        "not in the local HF cache either."
    )
    assert "mlrsnet_hf/digits-cnn-600" in message and "hf download org/mlrsnet-cifar10" in message


# A cached repo loading when the Hub is away, and HF_HUB_OFFLINE: tests/test_hub_downloads.py (a fake Hub).


@pytest.fixture
def fake_upload(monkeypatch):
    """``HfApi.create_repo`` / ``upload_folder`` replaced by a fake that records what each upload held."""
    uploads = []

    def create_repo(self, repo_id, **kwargs):
        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, **kwargs):
        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        uploads.append({"repo_id": repo_id, "files": files, "message": commit_message, "token": self.token})
        return SimpleNamespace(commit_url=f"https://huggingface.co/{repo_id}/commit/abc", oid="abc")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    return uploads


def test_publish_uploads_a_zoo_schedule_with_its_card(fake_upload, capsys):
    done = publish_zoo("me", [ZOO[0]], token="hf_x")  # one: each upload renders the card's picture
    assert list(done) == [ZOO[0]] and len(fake_upload) == 1
    upload = fake_upload[0]
    assert upload["repo_id"] == "me/mlrsnet-digits-cnn-600" and upload["token"] == "hf_x"
    assert set(upload["files"]) == {"config.json", "model.safetensors", "README.md", "lr_response.png"}
    card = upload["files"]["README.md"].decode()
    assert 'from_pretrained("me/mlrsnet-digits-cnn-600")' in card and "## Benchmark" in card
    assert upload["files"]["config.json"] == (ZOO_DIR / "digits-cnn-600" / "config.json").read_bytes()
    assert publish_zoo("me", dry_run=True) == {name: hub_repo_id(name, "me") for name in ZOO}
    assert main(["--namespace", "me", "--name", ZOO[1], "--dry-run"]) == 0
    assert capsys.readouterr().out == "mlrsnet_hf/mnist1d-cnn-600 -> me/mlrsnet-mnist1d-cnn-600\n"
    assert len(fake_upload) == 1  # the dry runs uploaded nothing
    with pytest.raises(ValueError, match="Not in the zoo"):
        publish_zoo("me", ["mlrsnet_hf/nope"])


def test_push_to_hub_offline_is_a_clear_error_naming_the_repo(monkeypatch):
    schedule = MLRSNetSchedule(hidden_size=4, gamma=0.5)

    def refused(self, repo_id, **kwargs):
        raise ConnectError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    with pytest.raises(HubUnreachableError) as error:
        schedule.push_to_hub("me/my-schedule")
    assert str(error.value) == (
        "Cannot push the schedule to 'me/my-schedule': the Hugging Face Hub (https://huggingface.co) cannot be "
        "reached (ConnectError: [Errno -2] Name or service not known). Save it with save_pretrained(DIR) and "
        "upload DIR when online (`hf upload me/my-schedule DIR`)."
    )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnreachableError, match=r"'me/my-schedule'.*\(HF_HUB_OFFLINE=1 is set\)"):
        schedule.push_to_hub("me/my-schedule")
    assert main(["--namespace", "me", "--name", ZOO[0]]) == 1  # the publish script says it in one line


def test_push_to_hub_keeps_the_hubs_own_answers(monkeypatch):
    def forbidden(self, repo_id, **kwargs):
        raise PermissionError("403 Forbidden: you cannot write to me/x")  # an answer, not a connection error

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", forbidden)
    with pytest.raises(PermissionError, match="403"):
        MLRSNetSchedule(hidden_size=4, gamma=0.5).push_to_hub("me/x")


def test_every_file_of_a_saved_repo_has_the_usual_mode(tmp_path):
    umask = os.umask(0o022)
    try:
        torch.manual_seed(0)
        MLRSNetSchedule(hidden_size=4, gamma=0.5).save_pretrained(
            tmp_path / "s", model_card_kwargs={"lr_history": [0.1, 0.2]}
        )
        modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "s").iterdir()}
    finally:
        os.umask(umask)
    assert modes == dict.fromkeys(
        ["README.md", "config.json", "lr_response.png", "lr_used.png", "model.safetensors"], 0o644
    )
    zoo = {stat.S_IMODE(p.stat().st_mode) & 0o444 for d in ZOO_DIR.iterdir() if d.is_dir() for p in d.iterdir()}
    assert zoo == {0o444}  # the zoo's files readable by all (model.safetensors was written 0600)
