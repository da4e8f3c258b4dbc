"""The files of a schedule repo and their strict reading, for any schedule family.

A schedule repo holds ``config.json`` (architecture, recipe, provenance, library version),
``model.safetensors`` (the learned weights, with a copy of the config in its metadata), ``README.md`` (the model
card) and ``lr_response.png`` (the picture the card embeds). What a family must provide is described in
:mod:`mlrsnet_hf.hub`; this module only calls it. :mod:`mlrsnet_hf.repo_writing` writes a repo, kill-safe.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import constants, get_hf_file_metadata, hf_hub_download, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id
from safetensors import SafetensorError
from safetensors.torch import load_file

from .repo_checks import (
    MAX_CONFIG_BYTES,
    WEIGHTS_CHECKSUM_KEY,
    RepoCheckError,
    check_config,
    check_header,
    check_values,
    listed,
    parse_config_text,
    read_header,
    weights_checksum,
)
from .version import __version__
from .zoo import ZOO_PREFIX, is_zoo_name, zoo_directory, zoo_names

logger = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"
PLOT_NAME = "lr_response.png"
USED_PLOT_NAME = "lr_used.png"
_METADATA_KEYS = ("model_type", "library_name", "library_version")
# Keys of the safetensors metadata: the config.json written with the weights, and the SHA-256 of the config.json
# that this save replaced (absent when there was none). They let a load tell a config.json left stale by a killed
# save (the weights are moved into place first) from one edited by hand.
EMBEDDED_CONFIG_KEY = "config"
REPLACED_CONFIG_KEY = "replaces_config_sha256"

COMMIT_HASH = re.compile(r"[0-9a-f]{40}")  # a revision that names a commit: its files never change


class ScheduleFileError(OSError):
    """A schedule repo's file is missing, unreadable, corrupted or does not match the config."""


class HubUnreachableError(ScheduleFileError):
    """The Hugging Face Hub could not be reached (no network, or ``HF_HUB_OFFLINE=1``) to download a schedule repo
    that is not in the local HF cache, or to upload one."""


_NETWORK_ERRORS = {"ConnectError", "ConnectTimeout", "NetworkError", "TimeoutException", "ProxyError"}


def is_network_error(error: BaseException) -> bool:
    """Whether ``error`` means that no answer came from the Hub (``huggingface_hub``'s offline mode, a refused or
    timed-out connection: the HTTP client's own classes, whichever client that is), not an answer of the Hub."""
    if isinstance(error, HfHubHTTPError):
        return False
    return isinstance(error, (ConnectionError, TimeoutError)) or any(
        c.__name__ in _NETWORK_ERRORS for c in type(error).__mro__
    )


# --------------------------------------------------------------------- loading
def looks_local(model_id: str) -> bool:
    """A local path, not a Hub id ``org/name``: it exists, starts like a path, has more than one separator,
    or has one and its parent directory exists (as for a mistyped ``output/schedul``)."""
    path = Path(model_id).expanduser()
    try:
        if path.exists() or model_id.startswith(("/", "./", "../", "~")) or model_id.strip("/").count("/") > 1:
            return True
        return "/" in model_id.strip("/") and path.parent.is_dir()
    except OSError:  # a name too long for a path (ENAMETOOLONG): no such directory
        return True


def resolve_files(model_id: str, filenames: Sequence[str], **download_kwargs: Any) -> list[Path]:
    """Paths of ``filenames`` in a local schedule directory, a zoo schedule or a Hub repo (downloaded or cached).

    Looked for in this order: an existing local directory, the zoo (``mlrsnet_hf/<name>``, shipped with the
    package), the Hub (``org/name``). A bare word that is not a directory, and a Hub repo when the Hub cannot be
    reached and the files are not cached, fail at once (no retries) with a :class:`ScheduleFileError` saying what
    was tried. The files of a Hub repo all come from one commit (see :func:`_download`).
    """
    if len(model_id) > 4096:
        raise ScheduleFileError(f"{model_id[:80]!r}... ({len(model_id)} characters) is not a path or a Hub repo id.")
    if os.path.isdir(model_id):
        if zoo_directory(model_id) is not None:
            logger.warning("Loading the local directory %s, not the zoo schedule of the same name.", model_id)
        return [_file_in(Path(model_id), name, model_id) for name in filenames]
    if is_zoo_name(model_id):
        directory = zoo_directory(model_id)
        if directory is None:
            raise ScheduleFileError(
                f"{model_id!r} is not a local directory, and the schedule zoo shipped with mlrsnet_hf has no such "
                f"name (no Hub repo is looked up under {ZOO_PREFIX!r}). The zoo: {', '.join(zoo_names())}."
            )
        return [_file_in(directory, name, model_id) for name in filenames]
    if os.path.isfile(model_id):
        raise ScheduleFileError(
            f"{model_id} is a file: a schedule is a directory holding {CONFIG_NAME} and {WEIGHTS_NAME}; pass the "
            f"directory ({os.path.dirname(model_id) or '.'})."
        )
    if looks_local(model_id):
        raise ScheduleFileError(f"No such directory: {model_id} (a local path, so no Hub repo was looked up).")
    if "/" not in model_id.strip("/"):
        raise ScheduleFileError(
            f"{model_id!r} is not a local directory, not a zoo schedule and not a Hub repo id ('org/name'), so "
            f"nothing was downloaded{_zoo_hint(model_id)}."
        )
    return _download(model_id, filenames, **download_kwargs)


def resolve_file(model_id: str, filename: str, **download_kwargs: Any) -> Path:
    """Path of one file of a schedule repo (:func:`resolve_files`)."""
    return resolve_files(model_id, [filename], **download_kwargs)[0]


def _file_in(directory: Path, filename: str, model_id: str) -> Path:
    path = directory / filename
    if not path.is_file():
        raise ScheduleFileError(f"{path} is missing: {model_id} is not a complete schedule repo.")
    return path


def _zoo_hint(word: str) -> str:
    """Names of the zoo for a message: the one ``word`` names, else all of them."""
    names = zoo_names()
    if ZOO_PREFIX + word in names:
        return f". Did you mean the zoo schedule {ZOO_PREFIX + word!r}?"
    return f". The schedule zoo shipped with mlrsnet_hf: {', '.join(names)}" if names else ""


def hub_is_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) is set, as ``huggingface_hub`` reads it."""
    return bool(getattr(constants, "HF_HUB_OFFLINE", False))


def unreachable_message(repo_id: str, what: str, error: BaseException | None) -> str:
    """Why ``repo_id`` could not be reached: ``HF_HUB_OFFLINE``, or the network error (in one line)."""
    why = "HF_HUB_OFFLINE=1 is set" if error is None else f"{type(error).__name__}: {str(error)[:200]}"
    return f"Cannot {what} {repo_id!r}: the Hugging Face Hub ({constants.ENDPOINT}) cannot be reached ({why})."


def _download(model_id: str, filenames: Sequence[str], **download_kwargs: Any) -> list[Path]:
    """``hf_hub_download`` of each file, all from the commit the first one comes from.

    Before a file that is not cached, the Hub is asked once, without retries, whether it can be reached
    (``hf_hub_download`` alone retries for 23 s); when it cannot, a copy in the HF cache still loads. Pinning the
    later files to the first one's commit keeps a config and its weights together when the repo is pushed to
    between the two downloads, and needs no request for a file that is cached; a revision that is a commit hash with
    every file cached makes no request at all.
    """
    kwargs = dict(download_kwargs)
    unreachable: BaseException | None = None
    name = filenames[0]
    paths: list[Path] = []
    try:
        for name in filenames:
            if not (hub_is_offline() or kwargs.get("local_files_only") or _cached_at_commit(model_id, name, kwargs)):
                unreachable = _probe(model_id, name, kwargs)
                if unreachable is not None and kwargs.get("force_download"):
                    raise _not_downloaded(model_id, name, unreachable, "force_download=True needs the Hub")
                kwargs["local_files_only"] = unreachable is not None  # then a copy in the HF cache still loads
            paths.append(Path(hf_hub_download(repo_id=model_id, filename=name, **kwargs)))
            kwargs["revision"] = snapshot_commit(paths[0]) or kwargs.get("revision")
        if unreachable is not None:
            logger.warning("The Hub cannot be reached (%s): using the cached copy of %s.", unreachable, model_id)
        return paths
    except HFValidationError as e:
        raise ScheduleFileError(
            f"{model_id!r} is neither an existing local directory, nor a zoo schedule, nor a valid Hub repo id "
            f"('org/name')."
        ) from e
    except LocalEntryNotFoundError as e:  # not cached, and the Hub not asked, unreachable or not answering usably
        if download_kwargs.get("local_files_only"):
            raise ScheduleFileError(
                f"{name} of schedule {model_id!r} is not in the local HF cache, and local_files_only=True."
            ) from e
        raise _not_downloaded(model_id, name, None if hub_is_offline() else unreachable or e.__cause__ or e) from e
    except RepositoryNotFoundError as e:
        raise ScheduleFileError(
            f"No local directory and no Hub repo named {model_id!r} (or it is private: log in with `hf auth login`)."
        ) from e
    except RevisionNotFoundError as e:
        raise ScheduleFileError(f"Revision {download_kwargs.get('revision')!r} not found in {model_id!r}.") from e
    except EntryNotFoundError as e:
        raise ScheduleFileError(f"{model_id!r} has no {name}: it is not a schedule repo made by mlrsnet_hf.") from e


def _not_downloaded(model_id: str, name: str, error: BaseException | None, why: str = "") -> ScheduleFileError:
    """The error for ``name`` of a Hub repo that could not be downloaded: a :class:`HubUnreachableError` for
    ``HF_HUB_OFFLINE`` (``error`` None) or a network error, else the Hub's unusable answer."""
    what = f"download {name} of schedule"
    if error is None or is_network_error(error):
        cache = f" {why}." if why else " It is not in the local HF cache either."
        return HubUnreachableError(
            f"{unreachable_message(model_id, what, error)}{cache} Pass a local schedule directory or a zoo schedule "
            f"({', '.join(zoo_names())}), or download it once with network (`hf download {model_id}`)."
        )
    return ScheduleFileError(
        f"Cannot {what} {model_id!r}: the Hub ({constants.ENDPOINT}) gave no usable answer "
        f"({type(error).__name__}: {str(error)[:300]}), and it is not in the local HF cache."
    )


def _cached_at_commit(model_id: str, filename: str, download_kwargs: dict[str, Any]) -> bool:
    """Whether the revision asked for is a commit hash and ``filename`` is in the HF cache at it (then
    ``hf_hub_download`` returns it without a request)."""
    revision = download_kwargs.get("revision")
    if download_kwargs.get("force_download") or not (isinstance(revision, str) and COMMIT_HASH.fullmatch(revision)):
        return False
    validate_repo_id(model_id)
    cache_dir = _expanded(download_kwargs.get("cache_dir"))
    return isinstance(try_to_load_from_cache(model_id, filename, cache_dir=cache_dir, revision=revision), str)


def _expanded(cache_dir: str | Path | None) -> str | None:
    """``cache_dir`` as ``hf_hub_download`` reads it (``~`` expanded)."""
    return None if cache_dir is None else str(Path(cache_dir).expanduser())


def _probe(model_id: str, filename: str, download_kwargs: dict[str, Any]) -> Exception | None:
    """Ask the Hub for the file's metadata once, without retries: the network error when it cannot be reached.

    Answers of the Hub (no such repo, revision or file) are raised as they are; other HTTP answers are left to the
    download to report.
    """
    validate_repo_id(model_id)
    url = hf_hub_url(model_id, filename, revision=download_kwargs.get("revision"))
    try:
        get_hf_file_metadata(url, token=download_kwargs.get("token"), retry_on_errors=False)
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError, HFValidationError):
        raise
    except Exception as e:
        return e if is_network_error(e) else None  # another answer of the Hub: the download reports it
    return None


def parse_config(text: str, source: str, cls: type) -> dict[str, Any]:
    """Check a config (JSON text from ``source``) for ``cls``: bounded, made for this kind of schedule, no unknown
    fields, no ``null`` where a value is needed, sizes within ``cls.config_limits``."""
    try:
        config = parse_config_text(text)
    except RepoCheckError as e:
        raise ScheduleFileError(f"{source} {e}") from None
    found = config.get("model_type")
    if found is not None and found != cls.model_type:
        raise ScheduleFileError(f"{source} is for model_type {str(found)[:80]!r}, not {cls.model_type!r}.")
    init_params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(config) - init_params - set(_METADATA_KEYS))
    if unknown:
        version = str(config.get("library_version", "?"))[:40]
        raise ScheduleFileError(
            f"{source} has unknown fields {listed(unknown)} (written by mlrsnet_hf {version}, this is "
            f"{__version__}): upgrade mlrsnet_hf or fix the file."
        )
    config = {k: v for k, v in config.items() if k not in _METADATA_KEYS}
    try:
        check_config(cls, config)
    except RepoCheckError as e:
        raise ScheduleFileError(f"{source} does not describe a valid schedule: {e}") from None
    return config


def read_text(path: Path) -> str:
    """A config file's text (UTF-8, a byte-order mark allowed), refused unread when it is too large."""
    try:
        size = path.stat().st_size
        if size <= MAX_CONFIG_BYTES:
            return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleFileError(f"{path} cannot be read as UTF-8 text ({e}).") from e
    raise ScheduleFileError(f"{path} is {size} bytes long: not a schedule config (at most {MAX_CONFIG_BYTES}).")


def read_weights_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """``(metadata, {name: (dtype, shape)})`` from the safetensors header alone (bounded)."""
    try:
        return read_header(path)
    except OSError as e:
        raise ScheduleFileError(f"{path} cannot be read ({e}).") from e
    except RepoCheckError as e:
        raise ScheduleFileError(f"{path} is truncated or corrupted and cannot be read as safetensors: {e}") from None


def read_weights_metadata(path: Path) -> dict[str, str]:
    """The safetensors header's metadata (only the header is read)."""
    return read_weights_header(path)[0]


def _newer_config(config_path: Path, metadata: dict[str, str], weights_path: Path) -> str | None:
    """The config embedded in the weights file when ``config_path`` was left stale by an interrupted save, else None.

    ``config.json`` is stale when it differs from the embedded config and is exactly the file the save that wrote
    the weights was replacing. A ``config.json`` edited by hand after a save stays authoritative.
    """
    embedded = metadata.get(EMBEDDED_CONFIG_KEY)
    if embedded is None:  # written before configs were embedded (or by another tool)
        return None
    try:
        raw = config_path.read_bytes() if config_path.stat().st_size <= MAX_CONFIG_BYTES else b""
    except OSError:
        return None  # read_text reports it
    try:
        if parse_config_text(raw.decode("utf-8-sig")) == parse_config_text(embedded):
            return None
    except (RepoCheckError, UnicodeDecodeError):
        pass
    if hashlib.sha256(raw).hexdigest() != metadata.get(REPLACED_CONFIG_KEY):
        return None
    logger.warning(
        "%s is stale: a save was interrupted after writing %s. Loading the config embedded in %s (the newer "
        "repo); save the schedule again to repair the directory.",
        config_path,
        weights_path.name,
        weights_path,
    )
    return embedded


def load_schedule(cls: type, model_id: str, overrides: dict[str, Any], **download_kwargs: Any) -> Any:
    """Build the schedule from ``config.json`` (plus ``overrides``) and load ``model.safetensors`` strictly.

    The config is checked (:mod:`mlrsnet_hf.repo_checks`) before anything is built from it, and the weights file's
    header against the config before its data are read; the data are verified against the checksum the save
    recorded (repos saved before the checksum existed have none).
    """
    init_params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - init_params)
    if unknown:
        raise TypeError(f"Unknown schedule options {unknown}; valid ones: {sorted(init_params)}.")
    config_path, weights_path = resolve_files(model_id, [CONFIG_NAME, WEIGHTS_NAME], **download_kwargs)
    metadata, entries = read_weights_header(weights_path)
    embedded = _newer_config(config_path, metadata, weights_path)
    source = str(config_path) if embedded is None else f"the config embedded in {weights_path}"
    config = parse_config(read_text(config_path) if embedded is None else embedded, source, cls)
    try:
        # On the meta device first: nothing is allocated before the weights file has been checked against it.
        with torch.device("meta"):
            skeleton = cls(**config)
    except (TypeError, ValueError) as e:
        raise ScheduleFileError(f"{source} does not describe a valid schedule: {str(e)[:500]}") from e
    if overrides:  # a bad override is the caller's mistake, not the file's
        config = {**config, **overrides}
        with torch.device("meta"):
            try:
                skeleton = cls(**config)
            except (TypeError, ValueError) as e:
                given = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
                raise ValueError(f"from_pretrained({model_id!r}, {given}): {e}") from e
    expected = skeleton.weights()
    try:
        check_header(entries, expected)
    except RepoCheckError as e:
        raise ScheduleFileError(f"{weights_path} does not match {source} ({skeleton.extra_repr()}): {e}") from None
    try:
        weights = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ScheduleFileError(
            f"{weights_path} is truncated or corrupted and cannot be read as safetensors ({e})."
        ) from e
    recorded = metadata.get(WEIGHTS_CHECKSUM_KEY)
    if recorded is not None and weights_checksum(weights) != recorded:
        raise ScheduleFileError(
            f"{weights_path} is corrupted: its tensors do not match the checksum its save recorded."
        )
    try:
        check_values(weights, expected)
        skeleton.validate_weights(weights)
    except (RepoCheckError, ValueError) as e:
        raise ScheduleFileError(f"{weights_path} holds unusable values: {e}") from None
    with torch.random.fork_rng(devices=[]):  # loading must not advance the caller's random stream
        schedule = cls(**config)
    schedule.load_state_dict(weights, strict=True)
    schedule.eval()
    schedule.name_or_path = model_id
    schedule.revision = (
        None if os.path.isdir(model_id) else loaded_revision(config_path, download_kwargs.get("revision"))
    )
    return schedule


def snapshot_commit(path: Path) -> str | None:
    """The commit a file in the HF cache was downloaded from (its snapshot directory's name), else None."""
    return path.parent.name if path.parent.parent.name == "snapshots" else None


def loaded_revision(config_path: Path, requested: str | None) -> str | None:
    """The commit a Hub file was downloaded from, else the revision asked for."""
    return snapshot_commit(config_path) or requested
