"""The schedule zoo: schedules this project learned, shipped inside the package and loadable offline by name.

A zoo schedule is named ``mlrsnet_hf/<task>-<steps>`` (the task it was meta-trained on and its budget in optimizer
steps), e.g. ``MLRSNetSchedule.from_pretrained("mlrsnet_hf/digits-cnn-600")``; :func:`zoo_names` lists them. Each is
an ordinary schedule repo (``config.json``, ``model.safetensors``, ``README.md`` card, ``lr_response.png``) in
``mlrsnet_hf/zoo/<task>-<steps>/`` and is loaded through the same checks as any repo.

Where a schedule argument is looked for, in this order:

1. an existing local directory of that name (``./mlrsnet_hf/digits-cnn-600`` beside you wins, with a warning);
2. the zoo, for a name starting with ``mlrsnet_hf/`` (a name there that the zoo lacks is an error listing the
   zoo, never a Hub lookup);
3. the Hub, for any other ``org/name``.

This module imports nothing of the package (the Hub layer asks it), so listing the zoo costs nothing.
"""

from __future__ import annotations

from pathlib import Path

ZOO_PREFIX = "mlrsnet_hf/"
ZOO_DIR = Path(__file__).parent


def zoo_names() -> list[str]:
    """The full names (``mlrsnet_hf/<task>-<steps>``) of the schedules shipped with the package, sorted."""
    return sorted(ZOO_PREFIX + p.name for p in ZOO_DIR.iterdir() if (p / "config.json").is_file())


def zoo_directory(model_id: str) -> Path | None:
    """The directory of zoo schedule ``model_id`` (``mlrsnet_hf/<name>``), None when the zoo has no such name."""
    if not model_id.startswith(ZOO_PREFIX):
        return None
    name = model_id[len(ZOO_PREFIX) :].strip("/")
    if not name or "/" in name or name.startswith(".") or ZOO_PREFIX + name not in zoo_names():
        return None
    return ZOO_DIR / name


def is_zoo_name(model_id: str) -> bool:
    """Whether ``model_id`` uses the zoo's prefix (whether or not the zoo has that name)."""
    return model_id.startswith(ZOO_PREFIX)
