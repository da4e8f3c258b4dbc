"""What a schedule repo must satisfy, checked before anything is built from it (and before a save writes it).

A repo may come from anyone, so loading is bounded: ``config.json`` is size-, depth- and range-checked, and
``model.safetensors``' header (names, dtypes, shapes) is checked against what the config describes before a
byte of tensor data is read. Every refusal is a :class:`~mlrsnet_hf.repo_files.ScheduleFileError` with a
message of bounded length. A save refuses to write what a load would refuse (:func:`check_writable`).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

MAX_CONFIG_BYTES = 1 << 20  # config.json
MAX_CONFIG_DEPTH = 16  # nesting of JSON objects and lists in config.json
MAX_HEADER_BYTES = 1 << 20  # the safetensors header (names, dtypes, shapes, metadata)
MAX_TENSORS = 4096
MAX_LISTED = 8  # names listed in one message
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
# Key of the safetensors metadata: the SHA-256 of the tensors (their names, dtypes, shapes and bytes).
WEIGHTS_CHECKSUM_KEY = "weights_sha256"


class RepoCheckError(ValueError):
    """What a repo's file or a schedule about to be saved breaks (the loader names the file)."""


def listed(names: Iterable[Any]) -> str:
    """``names`` for a message: at most :data:`MAX_LISTED` of them, then how many more."""
    names = list(names)
    shown = ", ".join(repr(n)[:80] for n in names[:MAX_LISTED])
    return f"[{shown}{f', ... ({len(names) - MAX_LISTED} more)' if len(names) > MAX_LISTED else ''}]"


# ------------------------------------------------------------------ config.json
def parse_config_text(text: str) -> dict[str, Any]:
    """The config object of ``text`` (a leading UTF-8 byte-order mark is allowed), bounded in size and depth."""
    if len(text) > MAX_CONFIG_BYTES:
        raise RepoCheckError(f"is {len(text)} characters long (at most {MAX_CONFIG_BYTES}).")
    try:
        config = json.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise RepoCheckError(f"is nested deeper than {MAX_CONFIG_DEPTH} levels.") from None
    except json.JSONDecodeError as e:
        raise RepoCheckError(f"is not valid JSON ({e}).") from None
    if not isinstance(config, dict):
        raise RepoCheckError(f"must hold a JSON object, got {type(config).__name__}.")
    pending, depth = [config], 0
    while pending:
        depth += 1
        if depth > MAX_CONFIG_DEPTH:
            raise RepoCheckError(f"is nested deeper than {MAX_CONFIG_DEPTH} levels.")
        pending = [
            v for c in pending for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, dict | list)
        ]
    return config


def check_config(cls: type, config: dict[str, Any]) -> None:
    """Refuse ``None`` where ``cls`` requires a value, and sizes beyond ``cls.config_limits`` (field -> largest)."""
    defaults = {n: p.default for n, p in inspect.signature(cls.__init__).parameters.items() if n != "self"}
    missing = [k for k, v in config.items() if v is None and k in defaults and defaults[k] is not None]
    if missing:
        raise RepoCheckError(f"{listed(missing)} must have a value, got null.")
    for field, largest in getattr(cls, "config_limits", {}).items():
        if field not in config:
            continue
        values = config[field] if isinstance(config[field], list) else [config[field]]
        for value in values:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= largest:
                raise RepoCheckError(f"{field} must be an integer from 1 to {largest}, got {str(value)[:40]}.")
        if isinstance(config[field], list) and not 1 <= len(values) <= largest:
            raise RepoCheckError(f"{field} must have 1 to {largest} entries, got {len(values)}.")


# ------------------------------------------------------------- model.safetensors
def read_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, tuple[int, ...]]]]:
    """``(metadata, {name: (dtype, shape)})`` of a safetensors file, from its header alone (bounded)."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise RepoCheckError("it is truncated (no safetensors header).")
        (size,) = struct.unpack("<Q", raw)
        if size > MAX_HEADER_BYTES:
            raise RepoCheckError(f"its header is {size} bytes long (at most {MAX_HEADER_BYTES}).")
        text = f.read(size)
    try:
        header = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise RepoCheckError("its header is not valid (truncated or corrupted).") from None
    if not isinstance(header, dict):
        raise RepoCheckError("its header is not valid (truncated or corrupted).")
    metadata = header.pop("__metadata__", None) or {}
    if len(header) > MAX_TENSORS:
        raise RepoCheckError(f"it holds {len(header)} tensors (at most {MAX_TENSORS}).")
    try:
        entries = {name: (str(e["dtype"]), tuple(int(n) for n in e["shape"])) for name, e in header.items()}
    except (TypeError, KeyError, ValueError):
        raise RepoCheckError("its header is not valid (truncated or corrupted).") from None
    if not isinstance(metadata, dict):
        raise RepoCheckError("its header's metadata is not valid.")
    return {str(k): str(v) for k, v in metadata.items()}, entries


def check_header(entries: dict[str, tuple[str, tuple[int, ...]]], expected: dict[str, torch.Tensor]) -> None:
    """The tensors a header lists against those the config describes: names, shapes, floating dtypes."""
    missing = sorted(set(expected) - set(entries))
    unexpected = sorted(set(entries) - set(expected))
    shapes = [
        f"{k}: file {entries[k][1]} vs config {tuple(v.shape)}"
        for k, v in expected.items()
        if k in entries and entries[k][1] != tuple(v.shape)
    ]
    problems = {"missing": missing, "unexpected": unexpected, "shape mismatch": shapes}
    if any(problems.values()):
        raise RepoCheckError("; ".join(f"{what} {listed(found)}" for what, found in problems.items() if found))
    not_float = [f"{k}: {dtype}" for k, (dtype, _) in entries.items() if dtype not in FLOAT_DTYPES]
    if not_float:
        raise RepoCheckError(f"it holds tensors that are not floating point: {listed(not_float)}.")


def check_values(weights: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Finite values, each representable in the dtype of the parameter it loads into."""
    bad = [k for k, v in weights.items() if not torch.isfinite(v).all()]
    if bad:
        raise RepoCheckError(f"it holds non-finite values in {listed(bad)}.")
    too_large = [
        k for k, v in weights.items() if v.numel() and v.abs().max().item() > torch.finfo(expected[k].dtype).max
    ]
    if too_large:
        raise RepoCheckError(f"it holds values too large for the parameters' dtype in {listed(too_large)}.")


def weights_checksum(weights: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors: each one's name, dtype, shape and bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------- save
def check_writable(schedule: Any, config: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
    """Refuse to save what loading would refuse: ``schedule``'s ``config`` with missing values or beyond the limits,
    ``weights`` that are not floating point or not finite, or values the family cannot use (``validate_weights``)."""
    check_config(type(schedule), config)
    try:
        parse_config_text(json.dumps(config))
    except RepoCheckError as e:
        raise RepoCheckError(f"its config {e}") from None
    not_float = [k for k, v in weights.items() if not v.is_floating_point()]
    if not_float:
        raise RepoCheckError(f"tensors that are not floating point: {listed(not_float)}.")
    check_values(weights, weights)
    schedule.validate_weights(weights)
