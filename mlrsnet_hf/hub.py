"""Schedules as Hub repos, for any schedule family: ``save_pretrained``/``from_pretrained``, the family registry,
card rendering. The files themselves (kill-safe writing, strict reading) are :mod:`mlrsnet_hf.repo_files`.

This module knows no schedule family. A family is a class with the :class:`ScheduleRepoMixin` (before
``PyTorchModelHubMixin``, whose class keywords ``library_name``, ``tags``, ``paper_url``... are the card's
metadata), a unique ``model_type``, and:

* ``config`` (what ``config.json`` holds) and ``weights()`` (what ``model.safetensors`` holds);
* ``plot_preview(path)`` (the card's picture) and ``plot_lr_history(lrs, path)`` (the LR of a training run);
* ``generate_model_card(**kwargs)``, usually :func:`card_from_template` with the family's template;
* optionally ``validate_weights(weights)``, raising ``ValueError`` for values the family cannot use.

Its family registration (:func:`mlrsnet_hf.families.register_family`) calls :func:`register_schedule_type`, so
that :func:`load_any_schedule` finds it by the ``model_type`` of a repo's ``config.json``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any, TypeVar

import torch
from huggingface_hub import ModelCard

from .builtin_families import load_builtin_families
from .repo_checks import RepoCheckError, parse_config_text
from .repo_files import (
    CARD_NAME,
    CONFIG_NAME,
    PLOT_NAME,
    USED_PLOT_NAME,
    WEIGHTS_NAME,
    HubUnreachableError,
    ScheduleFileError,
    hub_is_offline,
    is_network_error,
    load_schedule,
    read_text,
    resolve_file,
    resolve_files,
    snapshot_commit,
    unreachable_message,
)
from .repo_writing import write_schedule_repo
from .version import __version__

__all__ = [
    "CARD_NAME",
    "CONFIG_NAME",
    "PLOT_NAME",
    "USED_PLOT_NAME",
    "WEIGHTS_NAME",
    "HubUnreachableError",
    "ScheduleFileError",
    "ScheduleRepoMixin",
    "card_from_template",
    "load_any_schedule",
    "load_schedule",
    "register_schedule_type",
    "registered_schedule_types",
    "resolve_file",
    "resolve_files",
    "significant",
    "write_schedule_repo",
]

S = TypeVar("S", bound=type)


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
    load_builtin_families()
    return dict(_SCHEDULE_TYPES)


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


_HUB_KWARGS = ("force_download", "token", "cache_dir", "local_files_only", "revision")


def load_any_schedule(model_id: str | Path, **kwargs: Any) -> Any:
    """Load a schedule repo of any registered family, chosen by the ``model_type`` of its ``config.json``.

    ``kwargs`` go to the family's ``from_pretrained`` (``revision``, ``token``, ``cache_dir``... and overrides).
    """
    load_builtin_families()
    hub_kwargs = {k: kwargs[k] for k in _HUB_KWARGS if k in kwargs}
    # Both files at once: from the Hub, one commit and one reachability probe (the family's load then finds them).
    path, _ = resolve_files(str(model_id), [CONFIG_NAME, WEIGHTS_NAME], **hub_kwargs)
    try:
        config = parse_config_text(read_text(path))
    except RepoCheckError as e:
        raise ScheduleFileError(f"{path} {e}") from None
    model_type = config.get("model_type", _DEFAULT_TYPE[0] if _DEFAULT_TYPE else None)
    if not isinstance(model_type, str) or model_type not in _SCHEDULE_TYPES:
        raise ScheduleFileError(
            f"{path} is for model_type {str(model_type)[:80]!r}: not a registered schedule family "
            f"(registered: {sorted(_SCHEDULE_TYPES)})."
        )
    commit = snapshot_commit(path)
    if commit is not None:  # from the Hub: the family loads the commit just downloaded
        kwargs = {**kwargs, "revision": commit, "force_download": False}
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

    # Overrides the public method for one reason: offline, the mixin's push raises a raw connection error.
    def push_to_hub(self, repo_id: str, **kwargs: Any) -> Any:
        """Upload the repo ``save_pretrained`` writes to ``repo_id`` (``PyTorchModelHubMixin.push_to_hub``; same
        arguments). With ``HF_HUB_OFFLINE=1`` or no network: a :class:`~mlrsnet_hf.hub.HubUnreachableError` naming
        the repo, before or instead of the client's connection error."""
        later = f" Save it with save_pretrained(DIR) and upload DIR when online (`hf upload {repo_id} DIR`)."
        if hub_is_offline():
            raise HubUnreachableError(unreachable_message(repo_id, "push the schedule to", None) + later)
        try:
            return super().push_to_hub(repo_id, **kwargs)
        except Exception as e:
            if not is_network_error(e):
                raise
            raise HubUnreachableError(unreachable_message(repo_id, "push the schedule to", e) + later) from e

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
def significant(value: Any, digits: int = 4) -> Any:
    """``value`` with every float (also inside lists and dicts) rounded to ``digits`` significant digits."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}") if math.isfinite(value) else value
    if isinstance(value, (list, tuple)):
        return [significant(v, digits) for v in value]
    if isinstance(value, dict):
        return {k: significant(v, digits) for k, v in value.items()}
    return value


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
