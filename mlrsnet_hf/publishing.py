"""Publishing what a run used or learned: the schedule (or its trajectory) as a schedule repo, with the run's record.

One route for :class:`~mlrsnet_hf.MLRSNetTrainer`, :class:`~mlrsnet_hf.MLRSNetCallback` in a plain ``Trainer`` and
a loop of your own (:meth:`~mlrsnet_hf.driver.LRDriver.bind`): each hands its driver and a record of its run to
:func:`save_schedule` / :func:`push_schedule_to_hub`, so the same run writes the same repo whichever way it trained.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from .families import family_of
from .optimizers import optimizer_name, unwrap

logger = logging.getLogger(__name__)


def played_a_part(key: str, value: Any, gamma: Any) -> bool:
    """Whether a training setting of a meta-training record played a part in the run.

    ``learning_rate`` only when the gamma rule scales from it (``"relative"``): under a fixed, ``"auto"`` or
    ``"range_test"`` gamma the schedule sets every LR and ``TrainingArguments.learning_rate`` (5e-05 by default)
    plays no part. ``weight_decay`` only when the optimizer applied one (> 0). Every other field did.
    """
    if key == "learning_rate":
        return gamma == "relative"
    if key == "weight_decay":
        return bool(value)
    return True


def _record(driver: Any, model: Any, optimizer: str, max_steps: int, batch_size: Any, **run: Any) -> dict[str, Any]:
    """The part of a run's record every loop knows: model, steps, optimizer, meta settings (``run``: after model)."""
    meta, options = getattr(driver, "meta", None), driver.options
    return {
        "model": getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__,
        **run,
        "max_steps": max_steps,
        "optimizer": optimizer,
        "per_device_train_batch_size": batch_size,
        "meta_update_interval": options.meta_update_interval,
        "meta_horizon": options.meta_horizon,
        "meta_updates": meta.num_updates if meta is not None else 0,
        "meta_learning_rate": options.meta_learning_rate,
        "meta_weight_decay": options.meta_weight_decay,
        "num_classes": getattr(getattr(driver, "run", None), "num_classes", None),
    }


def _played(record: dict[str, Any], driver: Any, **values: Any) -> dict[str, Any]:
    """Add ``learning_rate`` / ``weight_decay`` where they played a part (as the card shows them)."""
    for key, value in values.items():
        if played_a_part(key, value, getattr(getattr(driver, "run", driver.schedule), "gamma", None)):
            record[key] = value
    return record


def run_record(driver: Any, args: Any, state: Any, model: Any, optimizer: Any, train_dataset: Any = None) -> dict:
    """What a Trainer run trained: model, epochs, optimizer, meta settings, final eval metrics (config.json, card).

    ``args`` are its ``TrainingArguments`` (with the schedule options), ``state`` its ``TrainerState``, ``model`` the
    unwrapped model.
    """
    record = _record(
        driver,
        model,
        optimizer_name(optimizer) if optimizer is not None else args.optim,
        state.max_steps,
        args.per_device_train_batch_size,
        epochs=round(float(state.epoch or 0), 3),
    )
    _played(record, driver, learning_rate=args.learning_rate, weight_decay=args.weight_decay)
    info = getattr(train_dataset, "info", None)
    if info is not None and getattr(info, "dataset_name", None):
        record["dataset"] = info.dataset_name
    metrics = {}
    for entry in state.log_history:
        metrics.update(
            {k[len("eval_") :]: v for k, v in entry.items() if k.startswith("eval_") and isinstance(v, (int, float))}
        )
    for key in ("runtime", "samples_per_second", "steps_per_second", "epoch"):
        metrics.pop(key, None)
    if metrics:
        record["results"] = metrics
    return record


def loop_record(driver: Any) -> dict[str, Any]:
    """What a loop of your own trained (:meth:`~mlrsnet_hf.driver.LRDriver.bind`): model, steps, optimizer, meta
    settings; add the rest (dataset, results) with ``meta_training=``."""
    model = getattr(driver.model, "module", driver.model)
    record = _record(
        driver, model, optimizer_name(driver.optimizer), driver.num_training_steps, driver.per_device_batch_size
    )
    weight_decay = unwrap(driver.optimizer).param_groups[0].get("weight_decay", 0.0)
    return _played(record, driver, learning_rate=driver.base_lr, weight_decay=weight_decay)


def schedule_to_publish(
    driver: Any, record: dict[str, Any], meta_training: dict[str, Any] | None = None, trajectory: bool | None = None
) -> Any:
    """A copy of the schedule in use (or its trajectory); after meta-training its record (``meta_training`` for
    MLR-SNet, the family's ``record_field``) is ``record`` updated with ``meta_training``."""
    meta, meta_train = getattr(driver, "meta", None), driver.options.meta_train
    snapshot_steps = meta.snapshot_steps if meta is not None else []
    if trajectory is None:
        trajectory = bool(meta_train and snapshot_steps)
        if trajectory and driver.schedule.num_stages > 1:
            logger.warning(
                "The meta-trained schedule has %d stages: saving it as it is. save_schedule(trajectory=True) "
                "writes the snapshots instead (each the network of the stage in use when it was taken).",
                driver.schedule.num_stages,
            )
            trajectory = False
    if trajectory and not (meta_train and snapshot_steps):
        raise ValueError("trajectory=True needs a meta-training run with snapshot_fractions set.")
    if meta_train and not record.get("meta_updates"):
        logger.warning(
            "This meta-training run made no meta update (max_steps=%s, meta_update_interval=%d): the schedule "
            "saved is its initialisation. meta_updates=0 is recorded in config.json and the card.",
            record.get("max_steps"),
            driver.options.meta_update_interval,
        )
    schedule = driver.published_schedule(trajectory)
    field = family_of(schedule).record_field
    if meta_train:
        snapshots = getattr(schedule, field).get("snapshots") if trajectory else None  # not an older run's
        setattr(schedule, field, {**record, **(meta_training or {})})
        if snapshots is not None:
            getattr(schedule, field)["snapshots"] = snapshots
    elif meta_training:
        getattr(schedule, field).update(meta_training)
    return schedule


def card_kwargs(driver: Any) -> dict[str, Any]:
    """What the saved schedule's card shows of the run: its LRs, and the range test's choice (gamma="range_test")."""
    kwargs: dict[str, Any] = {"lr_history": list(driver.lr_history)}
    if getattr(driver, "range_test", None) is not None:
        kwargs["range_test"] = driver.range_test
    return kwargs


def save_schedule(
    driver: Any,
    save_directory: str | Path,
    record: dict[str, Any],
    meta_training: dict[str, Any] | None = None,
    trajectory: bool | None = None,
) -> dict[str, Any]:
    """Write :func:`schedule_to_publish` as a schedule repo, its card with the run's LR curve; where it went."""
    schedule_to_publish(driver, record, meta_training, trajectory).save_pretrained(
        save_directory, model_card_kwargs=card_kwargs(driver)
    )
    return {"path": str(save_directory)}


def push_schedule_to_hub(
    driver: Any,
    repo_id: str,
    record: dict[str, Any],
    meta_training: dict[str, Any] | None = None,
    trajectory: bool | None = None,
    **kwargs: Any,
) -> tuple[Any, dict[str, Any]]:
    """Upload what :func:`save_schedule` writes to ``repo_id``: the commit, and where it went."""
    commit = schedule_to_publish(driver, record, meta_training, trajectory).push_to_hub(
        repo_id, model_card_kwargs=card_kwargs(driver), **kwargs
    )
    return commit, {"repo_id": repo_id, "revision": getattr(commit, "oid", None)}
