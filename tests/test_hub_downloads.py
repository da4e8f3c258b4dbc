"""Loading a schedule from the Hub through the real ``huggingface_hub`` download code, against a local HTTP server
that answers as the Hub's ``resolve`` endpoint does (``X-Repo-Commit``, ``ETag``, ``X-Error-Code``), with the HF
cache in a temporary directory: what is requested, which commit the files come from, and what happens when the Hub
goes away or the repo does not exist. Nothing here touches the network."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

import huggingface_hub
import pytest

from mlrsnet_hf import HubUnreachableError, MLRSNetSchedule, ScheduleFileError
from mlrsnet_hf.hub import load_any_schedule

REPO_ID = "org/mlrsnet-test"


class FakeHub:
    """Repos as ``{repo_id: [commit files, ...]}`` (the last commit is ``main``; ``tags`` name others); every request
    to a file is recorded, any other path is answered 404 and recorded in ``other``."""

    def __init__(self) -> None:
        self.repos: dict[str, list[dict[str, bytes]]] = {}
        self.tags: dict[str, int] = {}  # tag -> commit index, for every repo
        self.status: int | None = None  # answer every file request with this HTTP status instead
        self.requests: list[tuple[str, str, str]] = []  # (method, revision, filename)
        self.other: list[str] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"

    def push(self, repo_id: str, directory: Path) -> str:
        """A new commit of ``repo_id`` holding the files of ``directory``; returns its hash."""
        self.repos.setdefault(repo_id, []).append({p.name: p.read_bytes() for p in directory.iterdir()})
        return self.commit(repo_id, len(self.repos[repo_id]) - 1)

    @staticmethod
    def commit(repo_id: str, index: int) -> str:
        return hashlib.sha1(f"{repo_id}@{index}".encode()).hexdigest()

    def push_after_download(self, monkeypatch, directory: Path, filename: str) -> list[str]:
        """Push ``directory`` as a new commit right after the first download of ``filename`` (a race); the list
        returned holds the new commit once pushed."""
        real, pushed = huggingface_hub.file_download.http_get, []

        def http_get(url, temp_file, **kwargs):
            real(url, temp_file, **kwargs)
            if url.endswith(filename) and not pushed:
                pushed.append(self.push(REPO_ID, directory))

        monkeypatch.setattr(huggingface_hub.file_download, "http_get", http_get)
        return pushed

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                parts = unquote(self.path).lstrip("/").split("/", 4)
                if len(parts) < 5 or parts[2] != "resolve":
                    hub.other.append(self.path)
                    return self.error("")
                org, name, _, revision, filename = parts
                hub.requests.append((self.command, revision, filename))
                if hub.status is not None:
                    return self.error("", status=hub.status)
                commits = hub.repos.get(f"{org}/{name}")
                if commits is None:
                    return self.error("RepoNotFound")
                hashes = [hub.commit(f"{org}/{name}", k) for k in range(len(commits))]
                index = {"main": len(commits) - 1, **hub.tags, **{h: k for k, h in enumerate(hashes)}}.get(
                    revision, -1
                )
                if index < 0:
                    return self.error("RevisionNotFound")
                data = commits[index].get(filename)
                if data is None:
                    return self.error("EntryNotFound", hashes[index])
                self.send_response(200)
                self.send_header("X-Repo-Commit", hashes[index])
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def error(self, code: str, commit: str | None = None, status: int = 404) -> None:
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                if commit:
                    self.send_header("X-Repo-Commit", commit)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fake Hub at ``HF_ENDPOINT``, an empty HF cache, and online mode."""
    fake = FakeHub()
    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "ENDPOINT", fake.endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", fake.endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield fake
    fake.stop()


def saved(tmp_path: Path, name: str, **config) -> Path:
    MLRSNetSchedule(hidden_size=4, **config).save_pretrained(tmp_path / name)
    return tmp_path / name


def test_a_hub_schedule_loads_with_one_metadata_request_per_file_and_none_once_cached(hub, tmp_path):
    commit = hub.push(REPO_ID, saved(tmp_path, "v1", gamma=0.5))
    schedule = MLRSNetSchedule.from_pretrained(REPO_ID)
    assert schedule.gamma == 0.5 and schedule.revision == commit
    # each file: the probe (no retries), then huggingface_hub's metadata and data; the weights at the config's commit
    assert hub.requests == [
        ("HEAD", "main", "config.json"),
        ("HEAD", "main", "config.json"),
        ("GET", "main", "config.json"),
        ("HEAD", commit, "model.safetensors"),
        ("HEAD", commit, "model.safetensors"),
        ("GET", commit, "model.safetensors"),
    ]
    hub.requests.clear()
    assert MLRSNetSchedule.from_pretrained(REPO_ID).config == schedule.config
    assert hub.requests == [("HEAD", "main", "config.json")] * 2  # cached: is main still that commit?
    hub.requests.clear()
    assert MLRSNetSchedule.from_pretrained(REPO_ID, revision=commit).config == schedule.config
    assert hub.requests == []  # a commit hash, every file cached: no request


def test_load_any_schedule_passes_the_revision_and_loads_the_commit_it_dispatched_on(hub, tmp_path, monkeypatch):
    first = hub.push(REPO_ID, saved(tmp_path, "v1", gamma=0.5))
    hub.push(REPO_ID, saved(tmp_path, "v2", gamma=0.25))
    assert load_any_schedule(REPO_ID).gamma == 0.25
    hub.requests.clear()
    old = load_any_schedule(REPO_ID, revision=first)
    assert old.gamma == 0.5 and old.revision == first
    assert {r[1] for r in hub.requests} == {first}  # the dispatch read the revision asked for, not main
    assert len([r for r in hub.requests if r[0] == "GET"]) == 2  # each file downloaded once

    hub.push(REPO_ID, saved(tmp_path, "v3", gamma=0.125))
    pushed = hub.push_after_download(monkeypatch, saved(tmp_path, "v4", gamma=2.0), "model.safetensors")
    assert load_any_schedule(REPO_ID).gamma == 0.125  # main moved after the dispatch: the family loads what it read
    assert pushed


def test_the_weights_come_from_the_configs_commit_when_main_moves_between_the_downloads(hub, tmp_path, monkeypatch):
    first = hub.push(REPO_ID, saved(tmp_path, "v1", gamma=0.5))
    pushed = hub.push_after_download(monkeypatch, saved(tmp_path, "v2", gamma=0.25), "config.json")
    schedule = MLRSNetSchedule.from_pretrained(REPO_ID)
    assert pushed and schedule.gamma == 0.5 and schedule.revision == first
    assert hub.requests[-1] == ("GET", first, "model.safetensors")


def test_the_hubs_answers_become_one_line_errors(hub, tmp_path):
    with pytest.raises(ScheduleFileError, match=r"^No local directory and no Hub repo named 'org/missing'"):
        MLRSNetSchedule.from_pretrained("org/missing")
    hub.push(REPO_ID, saved(tmp_path, "v1"))
    with pytest.raises(ScheduleFileError, match=r"^Revision 'v9' not found in 'org/mlrsnet-test'\.$"):
        MLRSNetSchedule.from_pretrained(REPO_ID, revision="v9")
    (tmp_path / "v1" / "model.safetensors").unlink()
    hub.push(REPO_ID, tmp_path / "v1")
    with pytest.raises(ScheduleFileError, match=r"^'org/mlrsnet-test' has no model.safetensors: it is not a sched"):
        MLRSNetSchedule.from_pretrained(REPO_ID)


def test_when_the_hub_goes_away_a_cached_repo_loads_and_another_fails_after_one_request(hub, tmp_path, caplog):
    hub.push(REPO_ID, saved(tmp_path, "v1", gamma=0.5))
    MLRSNetSchedule.from_pretrained(REPO_ID)
    hub.stop()  # nothing listens at the endpoint any more
    assert MLRSNetSchedule.from_pretrained(REPO_ID).gamma == 0.5
    assert "The Hub cannot be reached" in caplog.text and "using the cached copy of org/mlrsnet-test" in caplog.text
    with pytest.raises(HubUnreachableError) as error:
        MLRSNetSchedule.from_pretrained("org/never-downloaded")
    message = str(error.value)
    assert message.startswith(
        f"Cannot download config.json of schedule 'org/never-downloaded': the Hugging Face Hub ({hub.endpoint}) "
        "cannot be reached (ConnectError"
    )
    assert "It is not in the local HF cache either" in message and "hf download org/never-downloaded" in message


def test_offline_mode_and_local_files_only_use_the_cache_without_a_request(hub, tmp_path, monkeypatch):
    hub.push(REPO_ID, saved(tmp_path, "v1", gamma=0.5))
    MLRSNetSchedule.from_pretrained(REPO_ID)
    hub.requests.clear()
    assert MLRSNetSchedule.from_pretrained(REPO_ID, local_files_only=True).gamma == 0.5
    with pytest.raises(ScheduleFileError, match=r"^config.json of schedule 'org/other' is not in the local HF cache"):
        MLRSNetSchedule.from_pretrained("org/other", local_files_only=True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert MLRSNetSchedule.from_pretrained(REPO_ID).gamma == 0.5
    with pytest.raises(HubUnreachableError, match=r"'org/other': the Hugging Face Hub .* \(HF_HUB_OFFLINE=1 is set\)"):
        MLRSNetSchedule.from_pretrained("org/other")
    assert hub.requests == []


def test_a_hub_that_goes_away_between_the_two_files_is_found_by_the_probe_not_by_retries(hub, tmp_path, monkeypatch):
    hub.push(REPO_ID, saved(tmp_path, "v1"))
    real = huggingface_hub.file_download.http_get

    def stop_after_the_config(url, temp_file, **kwargs):
        real(url, temp_file, **kwargs)
        if url.endswith("config.json"):
            hub.stop()

    calls = []
    probe = huggingface_hub.get_hf_file_metadata
    monkeypatch.setattr(huggingface_hub.file_download, "http_get", stop_after_the_config)
    monkeypatch.setattr(
        "mlrsnet_hf.repo_files.get_hf_file_metadata",
        lambda url, **k: calls.append(k["retry_on_errors"]) or probe(url, **k),
    )
    with pytest.raises(
        HubUnreachableError, match=r"^Cannot download model.safetensors of schedule 'org/mlrsnet-test'"
    ):
        MLRSNetSchedule.from_pretrained(REPO_ID)
    assert calls == [False, False]  # a probe before each file, without retries: no 23 s of backoff


def test_an_unusable_answer_of_the_hub_is_named_and_force_download_without_the_hub_is_refused(hub, tmp_path):
    hub.push(REPO_ID, saved(tmp_path, "v1"))
    hub.status = 403
    with pytest.raises(ScheduleFileError, match=r"gave no usable answer \(HfHubHTTPError: 403") as error:
        MLRSNetSchedule.from_pretrained(REPO_ID)
    assert not isinstance(error.value, HubUnreachableError)
    hub.status = None
    MLRSNetSchedule.from_pretrained(REPO_ID)
    hub.stop()
    with pytest.raises(
        HubUnreachableError, match=r"cannot be reached \(ConnectError.*force_download=True needs the Hub"
    ):
        MLRSNetSchedule.from_pretrained(REPO_ID, force_download=True)


def test_a_tag_loads_its_commit_online_and_from_the_cache_offline(hub, tmp_path, monkeypatch):
    first = hub.push(REPO_ID, saved(tmp_path, "v1", gamma=0.5))
    hub.push(REPO_ID, saved(tmp_path, "v2", gamma=0.25))
    hub.tags["v1.0"] = 0
    assert MLRSNetSchedule.from_pretrained(REPO_ID, revision="v1.0").revision == first
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert load_any_schedule(REPO_ID, revision="v1.0").gamma == 0.5  # the cache's refs/v1.0
    assert all(path.startswith("/api/") for path in hub.other)  # (huggingface_hub may ask for its agent registry)


def test_a_cache_dir_under_home_is_found_like_huggingface_hub_finds_it(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    commit = hub.push(REPO_ID, saved(tmp_path, "v1", gamma=0.5))
    MLRSNetSchedule.from_pretrained(REPO_ID, cache_dir="~/my-cache")
    assert (tmp_path / "my-cache").is_dir()
    hub.requests.clear()
    assert MLRSNetSchedule.from_pretrained(REPO_ID, cache_dir="~/my-cache", revision=commit).gamma == 0.5
    assert hub.requests == []
