"""Provenance of a model trained with a learned schedule: the tags and the ``schedule:`` reference of its model card.

A model trained by :class:`~mlrsnet_hf.MLRSNetTrainer` or a ``Trainer`` with :class:`~mlrsnet_hf.MLRSNetCallback`
carries the library's tags (``model.add_model_tags``, as TRL does) and, in its card's metadata, where the schedule
came from::

    tags: [mlrsnet_hf, learned-lr-schedule, mlrsnet, ...]
    schedule:
      model_type: mlrsnet_schedule    # the schedule family (or lr_controller)
      mode: transfer                  # or meta-train (learned online during this run)
      repo_id: org/name               # a Hub repo; or path: the local directory it was loaded from; or
                                      # zoo: mlrsnet_hf/NAME (with library_version): a schedule of the zoo
      revision: 0123abcd...           # the commit loaded (Hub repos only)
      saved_to: {repo_id: org/learned, revision: ...}   # MLRSNetTrainer.push_schedule_to_hub / save_schedule
      range_test: {lr: 0.46, rule: min_loss_div_3, rule_lr: 0.00042, fallback_reason: ...}   # gamma="range_test"

A schedule built in code has no ``repo_id`` or ``path``: nothing to point to until it is saved. After
meta-training, ``saved_to`` is where :class:`~mlrsnet_hf.MLRSNetTrainer` wrote the learned schedule (when the card is
made after ``save_schedule`` or ``push_schedule_to_hub``). With ``gamma="range_test"``, ``range_test`` is the LR the
range test chose for the run, the rule's own pick and, when the pick was replaced, why
(:func:`mlrsnet_hf.lr_range_rules.choose_lr_checked`; ``fallback_reason`` null: the rule's pick was used).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard
from torch import nn

from .families import family_of
from .hub import significant
from .version import __version__
from .zoo import zoo_directory

logger = logging.getLogger(__name__)

LIBRARY_TAGS = ["mlrsnet_hf", "learned-lr-schedule"]
CARD_NAME = "README.md"


def model_tags(schedule: Any) -> list[str]:
    """The tags of a model trained with ``schedule``: the library's and the schedule family's own."""
    return [*LIBRARY_TAGS, family_of(schedule).tag]


def range_test_summary(range_test: Any) -> dict[str, Any]:
    """What a card states of a range test (a ``RangeTestResult`` or its ``summary()``): the LR used, the rule, its
    own pick and the fallback reason (None: the pick was used), floats to 4 significant digits."""
    summary = range_test.summary() if hasattr(range_test, "summary") else dict(range_test)
    return {key: significant(summary.get(key)) for key in ("lr", "rule", "rule_lr", "fallback_reason")}


def schedule_reference(
    schedule: Any,
    meta_train: bool = False,
    saved_to: dict[str, Any] | None = None,
    range_test: Any = None,
) -> dict[str, Any]:
    """Where ``schedule`` came from, for the ``schedule:`` metadata of a trained model's card.

    ``repo_id`` and ``revision`` (the commit loaded, when known) for a Hub repo, ``path`` for a local directory,
    ``zoo`` and ``library_version`` for a schedule of the zoo, none of them for a schedule built in code. ``mode`` is ``"meta-train"`` when the run learned it online; ``saved_to``
    (``{"path"}`` or ``{"repo_id", "revision"}``) is where the run's schedule was written, if it was; ``range_test``
    (the run's ``RangeTestResult`` with ``gamma="range_test"``) adds the LR it chose (:func:`range_test_summary`).
    """
    reference: dict[str, Any] = {
        "model_type": getattr(schedule, "model_type", type(schedule).__name__),
        "mode": "meta-train" if meta_train else "transfer",
    }
    source = getattr(schedule, "name_or_path", None)
    if source is not None:
        if Path(source).expanduser().is_dir():
            reference["path"] = str(source)
        elif zoo_directory(str(source)) is not None:  # shipped with the package: its version says which
            reference["zoo"] = str(source)
            reference["library_version"] = __version__
        else:
            reference["repo_id"] = str(source)
            reference["revision"] = getattr(schedule, "revision", None)
    if saved_to:
        reference["saved_to"] = dict(saved_to)
    if range_test is not None:
        reference["range_test"] = range_test_summary(range_test)
    return reference


def add_model_tags(model: nn.Module, schedule: Any) -> None:
    """Tag ``model`` (a transformers ``PreTrainedModel``; other modules have no tags) with :func:`model_tags`.

    ``Trainer.push_to_hub`` and ``model.push_to_hub`` put ``model.model_tags`` in the card.
    """
    model = getattr(model, "module", model)
    if hasattr(model, "add_model_tags"):
        model.add_model_tags(model_tags(schedule))


def update_model_card(
    path: str | Path,
    schedule: Any,
    meta_train: bool = False,
    saved_to: dict[str, Any] | None = None,
    range_test: Any = None,
) -> ModelCard:
    """Add the tags and the ``schedule:`` reference to the model card at ``path`` (a ``README.md`` or its directory).

    The card is the one ``Trainer.create_model_card`` wrote; its other metadata and text are kept. ``range_test``:
    the run's range test (``gamma="range_test"``), whose choice the reference then states.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CARD_NAME
    card = ModelCard.load(path)
    existing = card.data.tags or []
    existing = [existing] if isinstance(existing, str) else list(existing)
    card.data.tags = existing + [t for t in model_tags(schedule) if t not in existing]
    card.data.schedule = schedule_reference(schedule, meta_train, saved_to, range_test)
    card.save(path)
    logger.info("Model card %s: schedule %s", path, card.data.schedule)
    return card
