"""The files of a schedule repo and their strict reading, for any schedule family.

A schedule repo holds ``config.json`` (architecture, recipe, provenance, library version),
``model.safetensors`` (the learned weights, with a copy of the config in its metadata), ``README.md`` (the model
card) and ``lr_response.png`` (the picture the card embeds). What a family must provide is described in
:mod:`mlrsnet_hf.hub`; this module only calls it. :mod:`mlrsnet_hf.repo_writing` writes a repo, kill-safe.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .version import __version__

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


class ScheduleFileError(OSError):
    """A schedule repo's file is missing, unreadable, corrupted or does not match the config."""


# --------------------------------------------------------------------- loading
def looks_local(model_id: str) -> bool:
    """A local path, not a Hub id ``org/name``: it exists, starts like a path, has more than one separator,
    or has one and its parent directory exists (as for a mistyped ``output/schedul``)."""
    path = Path(model_id).expanduser()
    if path.exists() or model_id.startswith(("/", "./", "../", "~")) or model_id.strip("/").count("/") > 1:
        return True
    return "/" in model_id.strip("/") and path.parent.is_dir()


def resolve_file(model_id: str, filename: str, **download_kwargs: Any) -> Path:
    """Path of ``filename`` in a local schedule directory or a Hub repo (downloaded or from the HF cache)."""
    if os.path.isdir(model_id):
        path = Path(model_id) / filename
        if not path.is_file():
            raise ScheduleFileError(f"{path} is missing: {model_id} is not a complete schedule repo.")
        return path
    if looks_local(model_id):
        raise ScheduleFileError(f"No such directory: {model_id} (a local path, so no Hub repo was looked up).")
    try:
        return Path(hf_hub_download(repo_id=model_id, filename=filename, **download_kwargs))
    except HFValidationError as e:
        raise ScheduleFileError(
            f"{model_id!r} is neither an existing local directory nor a valid Hub repo id ('org/name')."
        ) from e
    except LocalEntryNotFoundError as e:
        raise ScheduleFileError(
            f"Cannot load {filename} of schedule {model_id!r}: the Hub cannot be reached (offline or "
            f"HF_HUB_OFFLINE=1) and the file is not in the local HF cache. Download it once on a machine "
            f"with network (`hf download {model_id}`), or pass the path of a local schedule directory."
        ) from e
    except RepositoryNotFoundError as e:
        raise ScheduleFileError(
            f"No local directory and no Hub repo named {model_id!r} (or it is private: log in with `hf auth login`)."
        ) from e
    except RevisionNotFoundError as e:
        raise ScheduleFileError(f"Revision {download_kwargs.get('revision')!r} not found in {model_id!r}.") from e
    except EntryNotFoundError as e:
        raise ScheduleFileError(
            f"{model_id!r} has no {filename}: it is not a schedule repo made by mlrsnet_hf."
        ) from e


def parse_config(text: str, source: str, init_params: set[str], model_type: str) -> dict[str, Any]:
    """Check a config (JSON text from ``source``): valid JSON, made for this kind of schedule, no unknown fields."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise ScheduleFileError(f"{source} is not valid JSON ({e}).") from e
    if not isinstance(config, dict):
        raise ScheduleFileError(f"{source} must hold a JSON object, got {type(config).__name__}.")
    found = config.get("model_type")
    if found is not None and found != model_type:
        raise ScheduleFileError(f"{source} is for model_type {found!r}, not {model_type!r}.")
    unknown = sorted(set(config) - init_params - set(_METADATA_KEYS))
    if unknown:
        raise ScheduleFileError(
            f"{source} has unknown fields {unknown} (written by mlrsnet_hf {config.get('library_version', '?')}, "
            f"this is {__version__}): upgrade mlrsnet_hf or fix the file."
        )
    return {k: v for k, v in config.items() if k not in _METADATA_KEYS}


def read_config(path: Path, init_params: set[str], model_type: str) -> dict[str, Any]:
    """Read and check ``config.json`` (see :func:`parse_config`)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ScheduleFileError(f"{path} is not valid JSON ({e}).") from e
    return parse_config(text, str(path), init_params, model_type)


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as e:
        raise ScheduleFileError(f"{path} is truncated or corrupted and cannot be read as safetensors ({e}).") from e


def read_weights_metadata(path: Path) -> dict[str, str]:
    """The safetensors header's metadata (only the header is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as e:
        raise ScheduleFileError(f"{path} is truncated or corrupted and cannot be read as safetensors ({e}).") from e


def _newer_config(config_path: Path, weights_path: Path) -> str | None:
    """The config embedded in the weights file when ``config_path`` was left stale by an interrupted save, else None.

    ``config.json`` is stale when it differs from the embedded config and is exactly the file the save that wrote
    the weights was replacing. A ``config.json`` edited by hand after a save stays authoritative.
    """
    metadata = read_weights_metadata(weights_path)
    embedded = metadata.get(EMBEDDED_CONFIG_KEY)
    if embedded is None:  # written before configs were embedded (or by another tool)
        return None
    try:
        raw = config_path.read_bytes()
    except OSError:
        return None  # read_config reports it
    try:
        if json.loads(raw) == json.loads(embedded):
            return None
    except (json.JSONDecodeError, UnicodeDecodeError):
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


def _format(overrides: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in overrides.items())


def load_schedule(cls: type, model_id: str, overrides: dict[str, Any], **download_kwargs: Any) -> Any:
    """Build the schedule from ``config.json`` (plus ``overrides``) and load ``model.safetensors`` strictly."""
    init_params = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(overrides) - init_params)
    if unknown:
        raise TypeError(f"Unknown schedule options {unknown}; valid ones: {sorted(init_params)}.")
    config_path = resolve_file(model_id, CONFIG_NAME, **download_kwargs)
    weights_path = resolve_file(model_id, WEIGHTS_NAME, **download_kwargs)
    embedded = _newer_config(config_path, weights_path)
    if embedded is None:
        source = str(config_path)
        config = read_config(config_path, init_params, cls.model_type)
    else:
        source = f"the config embedded in {weights_path}"
        config = parse_config(embedded, source, init_params, cls.model_type)
    try:
        # On the meta device first: a config.json asking for a huge network allocates nothing before the
        # weights file has been checked against it.
        with torch.device("meta"):
            skeleton = cls(**config)
    except (TypeError, ValueError) as e:
        raise ScheduleFileError(f"{source} does not describe a valid schedule: {e}") from e
    if overrides:  # a bad override is the caller's mistake, not the file's
        config = {**config, **overrides}
        with torch.device("meta"):
            try:
                skeleton = cls(**config)
            except (TypeError, ValueError) as e:
                raise ValueError(f"from_pretrained({model_id!r}, {_format(overrides)}): {e}") from e

    weights = read_weights(weights_path)
    expected = skeleton.weights()
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong_shape = [
        f"{k}: file {tuple(weights[k].shape)} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in weights and weights[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        details = "; ".join(
            part
            for part in (
                f"missing {missing}" if missing else "",
                f"unexpected {unexpected}" if unexpected else "",
                f"shape mismatch {wrong_shape}" if wrong_shape else "",
            )
            if part
        )
        raise ScheduleFileError(f"{weights_path} does not match {source} ({skeleton.extra_repr()}): {details}.")
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        raise ScheduleFileError(f"{weights_path} holds non-finite values in {bad}.")
    try:
        skeleton.validate_weights(weights)
    except ValueError as e:
        raise ScheduleFileError(f"{weights_path} holds unusable values: {e}") from e
    with torch.random.fork_rng(devices=[]):  # loading must not advance the caller's random stream
        schedule = cls(**config)
    schedule.load_state_dict(weights, strict=True)
    schedule.eval()
    schedule.name_or_path = model_id
    schedule.revision = (
        None if os.path.isdir(model_id) else loaded_revision(config_path, download_kwargs.get("revision"))
    )
    return schedule


def loaded_revision(config_path: Path, requested: str | None) -> str | None:
    """The commit a Hub file was downloaded from (its HF cache snapshot directory), else the revision asked for."""
    if config_path.parent.parent.name == "snapshots":
        return config_path.parent.name
    return requested
