"""The registry of schedule families: what the core (Trainer, callback, CLI, provenance, publishing) knows of one.

A family is a kind of learned schedule: MLR-SNet (:mod:`mlrsnet_hf.mlrsnet`) and the PPO LR controller
(:mod:`mlrsnet_hf.lr_controller`) ship with the library. Each registers itself once, as PEFT's methods do::

    register_family(
        ScheduleFamily(
            model_type="my_schedule",          # config.json's model_type
            schedule_class=MySchedule,         # the artifact: save_pretrained / from_pretrained / push_to_hub
            driver_class=MyDriver,             # an LRDriver subclass with from_options()
            tag="my-schedule",                 # the Hub tag of models trained with it
            description="what it is, in one line",
            describe=describe_my_schedule,     # `mlrsnet info`
            plot=plot_my_schedule,             # `mlrsnet plot`
        )
    )

The core asks :func:`family_of` for the family of a schedule object and never tests a family's type, so a new
family (one defined in a user's own module, even) trains, saves, loads and is described through
:class:`~mlrsnet_hf.MLRSNetTrainer`, :class:`~mlrsnet_hf.MLRSNetCallback` and the ``mlrsnet`` command with no
edit to the core.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .builtin_families import load_builtin_families
from .hub import register_schedule_type


@dataclass(frozen=True)
class ScheduleFamily:
    """A schedule family as the core uses it.

    Attributes:
        model_type: the ``model_type`` of its repos' ``config.json`` (what :func:`~mlrsnet_hf.hub.load_any_schedule`
            dispatches on).
        schedule_class: the artifact class (a :class:`~mlrsnet_hf.hub.ScheduleRepoMixin`).
        driver_class: its :class:`~mlrsnet_hf.driver.LRDriver`; ``driver_class.from_options(schedule, options,
            held_out)`` builds the driver of a run (and refuses options it does not take).
        tag: the Hub tag of a model trained with it (beside the library's own).
        description: one line, for help texts.
        describe: ``describe(schedule, name) -> str``, what ``mlrsnet info`` prints.
        plot: ``plot(schedule, out, *, losses, num_classes, base_lr) -> list[float]``: draw its LR response to
            ``out`` (what ``mlrsnet plot`` does) and return the LRs drawn.
        new_schedule: ``new_schedule(args) -> schedule``: a fresh schedule to meta-train from an
            :class:`~mlrsnet_hf.MLRSNetConfig` (None: the family is not meta-trained online).
        record_field: the attribute of the artifact that holds the record of the run that trained it.
        held_out_defaults_to_eval: :class:`~mlrsnet_hf.MLRSNetTrainer` gives its driver the ``eval_dataset`` when
            no ``meta_dataset`` is passed.
    """

    model_type: str
    schedule_class: type
    driver_class: type
    tag: str
    description: str
    describe: Callable[[Any, str], str]
    plot: Callable[..., list[float]]
    new_schedule: Callable[[Any], Any] | None = None
    record_field: str = "meta_training"
    held_out_defaults_to_eval: bool = False

    @property
    def meta_trainable(self) -> bool:
        return self.new_schedule is not None


_FAMILIES: dict[str, ScheduleFamily] = {}


def register_family(family: ScheduleFamily, *, default: bool = False) -> ScheduleFamily:
    """Add ``family`` to the registry (and its schedule class to the Hub loader, under ``family.model_type``).

    ``default=True``: a ``config.json`` without ``model_type`` loads as this family, and
    :class:`~mlrsnet_hf.MLRSNetTrainer` meta-trains a fresh schedule of it when given none. Registering the same
    family again (a module reloaded) is allowed; another family under a taken ``model_type`` is refused.
    """
    if getattr(family.schedule_class, "model_type", None) != family.model_type:
        raise ValueError(
            f"{family.schedule_class.__name__}.model_type must be the family's model_type {family.model_type!r}."
        )
    if not callable(getattr(family.driver_class, "from_options", None)):
        raise TypeError(
            f"{family.driver_class.__name__} needs a from_options(schedule, options, held_out) classmethod."
        )
    register_schedule_type(family.schedule_class, default=default)
    _FAMILIES[family.model_type] = family
    if default:
        _FAMILIES["__default__"] = family
    return family


def registered_families() -> dict[str, ScheduleFamily]:
    """The registered families by ``model_type`` (the built-in ones always among them)."""
    load_builtin_families()
    return {name: family for name, family in _FAMILIES.items() if name != "__default__"}


def default_family() -> ScheduleFamily:
    """The family registered with ``default=True`` (MLR-SNet)."""
    load_builtin_families()
    if "__default__" not in _FAMILIES:
        raise RuntimeError("No default schedule family is registered (import mlrsnet_hf registers MLR-SNet).")
    return _FAMILIES["__default__"]


def family_of(schedule: Any) -> ScheduleFamily:
    """The family of a schedule object; a ``TypeError`` naming the registered ones for anything else."""
    family = _FAMILIES.get(getattr(type(schedule), "model_type", None))
    if family is None:
        load_builtin_families()
        family = _FAMILIES.get(getattr(type(schedule), "model_type", None))
    if family is None or not isinstance(schedule, family.schedule_class):
        known = ", ".join(f.schedule_class.__name__ for f in registered_families().values())
        raise TypeError(
            f"schedule must be a registered schedule family ({known}) or a path/repo id of one, "
            f"got {type(schedule).__name__}."
        )
    return family
