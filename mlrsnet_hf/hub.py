"""Schedules as Hub repos, for any schedule family: kill-safe saving, strict loading with clear errors, card rendering.

A schedule repo holds ``config.json`` (architecture, recipe, provenance, library version),
``model.safetensors`` (the learned weights, with a copy of the config in its metadata), ``README.md`` (the model
card, from a template in ``hub_cards/``) and ``lr_response.png`` (the picture the card embeds).

This module knows no schedule family. A family is a class with the :class:`ScheduleRepoMixin` (before
``PyTorchModelHubMixin``, whose class keywords ``library_name``, ``tags``, ``paper_url``... are the card's
metadata), a unique ``model_type``, and:

* ``config`` (what ``config.json`` holds) and ``weights()`` (what ``model.safetensors`` holds);
* ``plot_preview(path)`` (the card's picture) and ``plot_lr_history(lrs, path)`` (the LR of a training run);
* ``generate_model_card(**kwargs)``, usually :func:`card_from_template` with the family's template;
* optionally ``validate_weights(weights)``, raising ``ValueError`` for values the family cannot use.

It registers itself with :func:`register_schedule_type`, so that :func:`load_any_schedule` finds it by the
``model_type`` of a repo's ``config.json``.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import ModelCard, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

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
_TMP_MARK = ".tmp-"

S = TypeVar("S", bound=type)


class ScheduleFileError(OSError):
    """A schedule repo's file is missing, unreadable, corrupted or does not match the config."""


# -------------------------------------------------------------------- registry
_SCHEDULE_TYPES: dict[str, type] = {}
_DEFAULT_TYPE: list[str] = []  # the model_type assumed for a config.json without one (set by a family)


def register_schedule_type(cls: S | None = None, *, default: bool = False) -> S | Callable[[S], S]:
    """Register a schedule family under its ``model_type`` (a class decorator, with or without arguments).

    ``default=True``: a ``config.json`` without ``model_type`` is loaded as this family by :func:`load_any_schedule`.
    """

    def register(family: S) -> S:
        model_type = getattr(family, "model_type", None)
        if not isinstance(model_type, str) or not model_type:
            raise TypeError(f"{family.__name__} needs a non-empty string class attribute model_type.")
        known = _SCHEDULE_TYPES.get(model_type)
        if known is not None and _qualified(known) != _qualified(family):  # the same class again (a reload) is fine
            raise ValueError(f"model_type {model_type!r} is already registered for {_qualified(known)}.")
        _SCHEDULE_TYPES[model_type] = family
        if default:
            _DEFAULT_TYPE[:] = [model_type]
        return family

    return register if cls is None else register(cls)


def registered_schedule_types() -> dict[str, type]:
    """``model_type`` -> family class, for every registered family."""
    return dict(_SCHEDULE_TYPES)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


# ---------------------------------------------------------------------- saving
def write_schedule_repo(
    schedule: Any, save_directory: str | Path, lr_history: list[float] | None = None, **card_kwargs: Any
) -> None:
    """Write the repo so that a process killed at any point leaves the old repo or the new one, never a mix.

    Everything is written into a temporary sibling directory first. A new directory is then one rename; into an
    existing one the files are moved one by one, ``model.safetensors`` first (it carries the new config in its
    metadata, so until ``config.json`` follows, loading uses that config), then ``config.json``, then the card and
    pictures. Temporary directories left by a killed save are removed at the start of the next one. A
    ``README.md`` not generated by this library is kept as it is.

    ``lr_history``, the LR of every optimizer step of a training run, adds ``lr_used.png`` to the repo and the card.
    """
    save_directory = Path(save_directory)
    if save_directory.exists() and not save_directory.is_dir():
        raise NotADirectoryError(f"Cannot save a schedule to {save_directory}: it exists and is not a directory.")
    save_directory.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temp_dirs(save_directory)
    keep_card = _is_foreign_card(save_directory / CARD_NAME)
    if keep_card:
        logger.info("Keeping %s: it was not generated by mlrsnet_hf.", save_directory / CARD_NAME)

    config_text = json.dumps(schedule.config, indent=2, sort_keys=True) + "\n"
    metadata = {"format": "pt", "mlrsnet_hf": __version__, EMBEDDED_CONFIG_KEY: config_text}
    old_config = save_directory / CONFIG_NAME
    if old_config.is_file():
        metadata[REPLACED_CONFIG_KEY] = hashlib.sha256(old_config.read_bytes()).hexdigest()

    tmp = Path(tempfile.mkdtemp(prefix=f".{save_directory.name}{_TMP_MARK}", dir=save_directory.parent))
    try:
        (tmp / CONFIG_NAME).write_text(config_text, encoding="utf-8")
        save_file(schedule.weights(), str(tmp / WEIGHTS_NAME), metadata=metadata)
        schedule.plot_preview(tmp / PLOT_NAME)
        if lr_history:
            schedule.plot_lr_history(lr_history, tmp / USED_PLOT_NAME)
            card_kwargs["used_plot_name"] = USED_PLOT_NAME
        if not keep_card:
            schedule.generate_model_card(**card_kwargs).save(tmp / CARD_NAME)
        if not save_directory.exists():
            os.replace(tmp, save_directory)  # one rename: all or nothing
        else:
            first = [WEIGHTS_NAME, CONFIG_NAME]
            for name in first + sorted(p.name for p in tmp.iterdir() if p.name not in first):
                os.replace(tmp / name, save_directory / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temp_dirs(save_directory: Path) -> None:
    """Remove the temporary siblings ``.<name>.tmp-*`` of ``save_directory`` that a killed save left behind."""
    for stale in save_directory.parent.glob(f".{save_directory.name}{_TMP_MARK}*"):
        if stale.is_dir() and not stale.is_symlink():
            logger.info("Removing %s, left by an interrupted save.", stale)
            shutil.rmtree(stale, ignore_errors=True)


def _is_foreign_card(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        return ModelCard.load(path).data.to_dict().get("library_name") != "mlrsnet_hf"
    except Exception:  # an unparsable card is the user's, not ours
        return True


# --------------------------------------------------------------------- loading
def resolve_file(model_id: str, filename: str, **download_kwargs: Any) -> Path:
    """Path of ``filename`` in a local schedule directory or a Hub repo (downloaded or from the HF cache)."""
    if os.path.isdir(model_id):
        path = Path(model_id) / filename
        if not path.is_file():
            raise ScheduleFileError(f"{path} is missing: {model_id} is not a complete schedule repo.")
        return path
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
    config = {**config, **overrides}
    try:
        # On the meta device first: a config.json asking for a huge network allocates nothing before the
        # weights file has been checked against it.
        with torch.device("meta"):
            skeleton = cls(**config)
    except (TypeError, ValueError) as e:
        raise ScheduleFileError(f"{source} does not describe a valid schedule: {e}") from e

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
    if "_extra_state" in schedule.state_dict():
        weights["_extra_state"] = schedule.get_extra_state()  # the runtime state starts fresh
    schedule.load_state_dict(weights, strict=True)
    schedule.eval()
    schedule.name_or_path = model_id
    return schedule


def load_any_schedule(model_id: str | Path, **kwargs: Any) -> Any:
    """Load a schedule repo of any registered family, chosen by the ``model_type`` of its ``config.json``."""
    path = resolve_file(str(model_id), CONFIG_NAME)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScheduleFileError(f"{path} is not a valid schedule config ({e}).") from e
    if not isinstance(config, dict):
        raise ScheduleFileError(f"{path} is not a valid schedule config (a JSON {type(config).__name__}).")
    model_type = config.get("model_type", _DEFAULT_TYPE[0] if _DEFAULT_TYPE else None)
    if model_type not in _SCHEDULE_TYPES:
        raise ScheduleFileError(
            f"{path} is for model_type {model_type!r}: not a registered schedule family "
            f"(registered: {sorted(_SCHEDULE_TYPES)})."
        )
    return _SCHEDULE_TYPES[model_type].from_pretrained(str(model_id), **kwargs)


class ScheduleRepoMixin:
    """``save_pretrained`` / ``from_pretrained`` of a schedule repo (kill-safe save, strict load), for every
    schedule family; listed before ``PyTorchModelHubMixin``, which keeps ``push_to_hub`` and the card metadata."""

    # Overrides the public method, not the mixin's _save_pretrained: the mixin writes config.json non-atomically.
    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        config: dict | None = None,
        repo_id: str | None = None,
        push_to_hub: bool = False,
        model_card_kwargs: dict[str, Any] | None = None,
        **push_to_hub_kwargs,
    ) -> str | None:
        """Write the schedule repo: ``config.json``, ``model.safetensors``, ``README.md`` and ``lr_response.png``.

        A save killed at any point leaves the old repo or the new one (see :func:`write_schedule_repo`). A
        ``README.md`` not generated by this library is kept as it is. ``model_card_kwargs`` go to the card
        template; ``lr_history`` among them (the LR of every step of a run) adds the picture ``lr_used.png``.
        """
        if config is not None:
            raise ValueError(f"{type(self).__name__} derives config.json from itself; do not pass config=.")
        write_schedule_repo(self, Path(save_directory), **(model_card_kwargs or {}))
        if push_to_hub:
            return self.push_to_hub(
                repo_id or Path(save_directory).name, model_card_kwargs=model_card_kwargs, **push_to_hub_kwargs
            )
        return None

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | Path,
        *,
        force_download: bool = False,
        token: str | bool | None = None,
        cache_dir: str | Path | None = None,
        local_files_only: bool = False,
        revision: str | None = None,
        **overrides: Any,
    ) -> Any:
        """Load a schedule repo from a local directory or the Hub (``"org/name"``), strictly.

        ``overrides`` replace fields of ``config.json`` (e.g. ``gamma=0.1`` for an MLR-SNet schedule). Works offline
        (``HF_HUB_OFFLINE=1``) from the local HF cache. Missing, corrupted or mismatched files raise
        :class:`~mlrsnet_hf.hub.ScheduleFileError` naming the file.
        """
        return load_schedule(
            cls,
            str(pretrained_model_name_or_path),
            overrides=overrides,
            force_download=force_download,
            token=token,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            revision=revision,
        )

    def validate_weights(self, weights: dict[str, torch.Tensor]) -> None:
        """Raise ``ValueError`` if loaded (finite, well-shaped) weights hold values this family cannot use."""


# ------------------------------------------------------------------ model card
def card_from_template(
    schedule: Any, template_name: str, card_data: dict[str, Any] | None = None, **template_kwargs: Any
) -> ModelCard:
    """Render ``hub_cards/<template_name>`` for ``schedule``.

    The card's metadata starts from what the class declares to ``PyTorchModelHubMixin`` (``library_name``,
    ``tags``, ``license``...; a copy), updated with ``card_data`` (``datasets``, ``metrics``, ``eval_results``,
    ``model_name``...). The template also gets the class's ``paper_url``/``repo_url``/``docs_url``, the picture's
    name (``plot_name``), the library version and ``template_kwargs``.
    """
    info = schedule._hub_mixin_info
    data = copy.deepcopy(info.model_card_data)
    for key, value in (card_data or {}).items():
        setattr(data, key, value)
    template = files("mlrsnet_hf.hub_cards").joinpath(template_name).read_text(encoding="utf-8")
    return ModelCard.from_template(
        data,
        template_str=template,
        model_name=data.model_name,
        paper_url=info.paper_url,
        repo_url=info.repo_url,
        docs_url=info.docs_url,
        plot_name=PLOT_NAME,
        library_version=__version__,
        **template_kwargs,
    )
