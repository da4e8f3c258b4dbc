"""Schedule repos from anyone: bounded, strict loading, saves that touch nothing else (issue 35 items 2-6).

Each refusal is a ScheduleFileError naming the file, in well under a second, with a message of bounded length.
"""

import json
import struct
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mlrsnet_hf import LRController, MLRSNetSchedule, ScheduleFileError
from mlrsnet_hf.hub import load_any_schedule
from mlrsnet_hf.repo_files import read_weights_metadata


def saved(tmp_path: Path, name: str = "repo", **kwargs) -> Path:
    torch.manual_seed(0)
    out = tmp_path / name
    MLRSNetSchedule(hidden_size=4, num_stages=2, gamma=0.1, **kwargs).save_pretrained(out)
    return out


def edit_config(repo: Path, **fields) -> None:
    config = json.loads((repo / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**config, **fields}))


def rewrite_weights(repo: Path, edit) -> None:
    """Rewrite model.safetensors as another tool would (without the checksum a save records)."""
    path = repo / "model.safetensors"
    tensors, metadata = load_file(path), read_weights_metadata(path)
    tensors = edit(tensors)
    save_file(tensors, path, metadata={k: v for k, v in metadata.items() if k != "weights_sha256"})


def refused(repo: Path, match: str, loader=MLRSNetSchedule.from_pretrained) -> str:
    start = time.perf_counter()
    with pytest.raises(ScheduleFileError, match=match) as info:
        loader(repo)
    assert time.perf_counter() - start < 1.0
    message = str(info.value)
    assert len(message) < 1200, message[:300]
    return message


# -------------------------------------------------------- item 3: bounded loading
@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"num_layers": 20000}, "num_layers must be an integer from 1 to 8, got 20000"),
        ({"num_stages": 20000}, "num_stages must be an integer from 1 to 64, got 20000"),
        ({"hidden_size": 2**62}, "hidden_size must be an integer from 1 to 1024"),
        ({"hidden_size": 2.5}, "hidden_size must be an integer"),
        ({"num_stages": True}, "num_stages must be an integer"),
    ],
)
def test_sizes_beyond_the_limits_are_refused_before_anything_is_built(tmp_path, fields, match):
    repo = saved(tmp_path)
    edit_config(repo, **fields)
    assert "config.json does not describe a valid schedule" in refused(repo, match)


def test_a_config_nested_too_deep_or_too_large_is_refused(tmp_path):
    repo = saved(tmp_path)
    (repo / "config.json").write_text('{"meta_training": ' + "[" * 100_000 + "]" * 100_000 + "}")
    refused(repo, "config.json is nested deeper than 16 levels")
    (repo / "config.json").write_text('{"meta_training": {"a": [[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]}}')
    refused(repo, "config.json is nested deeper than 16 levels")
    (repo / "config.json").write_text(json.dumps({"meta_training": {"notes": "x" * (2 << 20)}}))
    refused(repo, "config.json is .* bytes long: not a schedule config")


def raw_safetensors(path: Path, header: dict) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text)


def test_many_tensors_or_a_huge_header_are_refused_from_the_header(tmp_path):
    repo = saved(tmp_path)
    weights = repo / "model.safetensors"
    entries = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(5000)}
    raw_safetensors(weights, entries)
    refused(repo, "model.safetensors is truncated or corrupted.*holds 5000 tensors \\(at most 4096\\)")
    weights.write_bytes(struct.pack("<Q", 1 << 40) + b"{}")
    refused(repo, "its header is 1099511627776 bytes long")
    entries = {f"t{i}": {"dtype": "F32", "shape": [1], "data_offsets": [4 * i, 4 * i + 4]} for i in range(3000)}
    raw_safetensors(weights, entries)
    message = refused(repo, r"does not match .*unexpected \['t0', .*\(2992 more\)\]")  # listed, bounded
    assert message.count("'t") <= 8


# ------------------------------------------------------------------ item 4: None
@pytest.mark.parametrize("field", ["gamma", "input_normalization", "relative_max_scale"])
def test_null_where_a_value_is_needed_is_refused_at_load_and_at_construction(tmp_path, field):
    repo = saved(tmp_path)
    edit_config(repo, **{field: None})
    refused(repo, rf"config.json does not describe a valid schedule: \['{field}'\] must have a value, got null")
    with pytest.raises(ValueError, match=f"{field} must have a value, got None"):
        MLRSNetSchedule(**{field: None})
    with pytest.raises(ValueError, match="num_stages must be an integer, got 2.5"):
        MLRSNetSchedule(num_stages=2.5)  # (schedule_num_stages=2.5 was a bare TypeError)


# --------------------------------------------------------- item 5: dtypes, values
@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.uint8, torch.bool, torch.complex64])
def test_tensors_that_are_not_floating_point_are_refused(tmp_path, dtype):
    repo = saved(tmp_path)
    rewrite_weights(repo, lambda t: {k: (v.to(dtype) if k.endswith("head.bias") else v) for k, v in t.items()})
    refused(repo, r"model.safetensors does not match .*not floating point: \['stages.0.head.bias: ")


def test_values_too_large_for_the_parameters_dtype_are_refused(tmp_path):
    repo = saved(tmp_path)
    rewrite_weights(
        repo,
        lambda t: {**t, "stages.0.head.bias": torch.full_like(t["stages.0.head.bias"], 1e300, dtype=torch.float64)},
    )
    refused(
        repo,
        r"model.safetensors holds unusable values: .*too large for the parameters' dtype in \['stages.0.head.bias'\]",
    )
    rewrite_weights(
        repo,
        lambda t: {**t, "stages.0.head.bias": torch.full_like(t["stages.0.head.bias"], 1e30, dtype=torch.float64)},
    )
    schedule = MLRSNetSchedule.from_pretrained(repo)  # float64 within float32's range loads
    assert schedule.stages[0].head.bias.dtype == torch.float32 and torch.isfinite(schedule.stages[0].head.bias).all()


@pytest.mark.parametrize("family", ["mlrsnet", "controller"])
def test_a_save_refuses_what_a_load_would_refuse(tmp_path, family):
    schedule = MLRSNetSchedule(hidden_size=4) if family == "mlrsnet" else LRController()
    with torch.no_grad():
        next(schedule.parameters()).view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match="Cannot save this .*: from_pretrained would refuse it.*non-finite"):
        schedule.save_pretrained(tmp_path / "repo")
    assert not (tmp_path / "repo").exists() and not list(tmp_path.iterdir())


# ---------------------------------------------------------- item 6: the smaller ones
def test_a_single_bit_flip_in_the_tensor_data_is_refused(tmp_path):
    repo = saved(tmp_path)
    weights = repo / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # the last tensor's bytes: the header is untouched
    weights.write_bytes(bytes(data))
    refused(repo, "model.safetensors is corrupted: its tensors do not match the checksum its save recorded")
    saved(tmp_path, "old")  # a repo without a checksum (saved before it existed) still loads
    rewrite_weights(tmp_path / "old", lambda t: t)
    assert "weights_sha256" not in read_weights_metadata(tmp_path / "old" / "model.safetensors")
    MLRSNetSchedule.from_pretrained(tmp_path / "old")


def test_a_config_with_a_byte_order_mark_loads(tmp_path):
    repo = saved(tmp_path)
    config = repo / "config.json"
    config.write_bytes(b"\xef\xbb\xbf" + config.read_bytes())
    assert MLRSNetSchedule.from_pretrained(repo).hidden_size == 4
    assert load_any_schedule(repo).hidden_size == 4


def test_a_very_long_repo_id_is_a_clear_error():
    with pytest.raises(ScheduleFileError, match=r"\(5000 characters\) is not a path or a Hub repo id"):
        MLRSNetSchedule.from_pretrained("a" * 2500 + "/" + "b" * 2499)
    with pytest.raises(
        ScheduleFileError, match="is neither an existing local directory, nor a zoo schedule, nor a valid Hub repo id"
    ):
        MLRSNetSchedule.from_pretrained("org/" + "b" * 300)  # too long for a file name: not a crash


# --------------------------------------------------------- item 2: temporary names
@pytest.mark.parametrize("name", ["exp[1]", "ckpt*", "run?", "a**b", "[!x]"])
def test_saves_to_names_with_pattern_characters_work_and_touch_nothing_else(tmp_path, name):
    neighbours = {
        "exp1": tmp_path / ".exp1.tmp-abcdefgh",  # a save to exp1 in progress (marked)
        "mine": tmp_path / f".{name}.tmp-anything",  # a user's folder
        "ckpt1": tmp_path / ".ckpt1.tmp-12345678",
        "runa": tmp_path / ".runa.tmp-zzzzzzzz",
    }
    for folder in neighbours.values():
        folder.mkdir()
        (folder / ".mlrsnet_hf-save-in-progress").touch()
    (neighbours["mine"] / ".mlrsnet_hf-save-in-progress").unlink()
    saved(tmp_path, name)
    saved(tmp_path, name)  # over the repo: the second save looks for its stale temporary directories
    assert all(folder.is_dir() for folder in neighbours.values())
    assert MLRSNetSchedule.from_pretrained(tmp_path / name).hidden_size == 4
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == sorted([name, *(f.name for f in neighbours.values())])
    assert not (tmp_path / name / ".mlrsnet_hf-save-in-progress").exists()


def test_a_stale_temporary_directory_of_a_killed_save_is_removed_only_with_its_mark(tmp_path):
    saved(tmp_path)
    stale, unmarked = tmp_path / ".repo.tmp-abc123_x", tmp_path / ".repo.tmp-abc123_y"
    for folder in (stale, unmarked):
        folder.mkdir()
        (folder / "config.json").write_text("{}")
    (stale / ".mlrsnet_hf-save-in-progress").touch()
    saved(tmp_path)
    assert not stale.exists() and unmarked.is_dir()


@pytest.mark.slow
def test_the_hostile_probe_family_holds(tmp_path):
    """benchmarks/hostile_probes.py (kills, damaged repos, every field of three checkpoints corrupted six ways, bad
    arguments), with few bit flips: every case holds."""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "hostile_probes.py"
    done = subprocess.run(
        [sys.executable, str(script), "--flips", "5", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((tmp_path / "hostile_probes.json").read_text())
    assert record["total"]["failed"] == 0, record["failures"][:10]
    assert record["total"]["held"] > 1000


def test_none_is_refused_at_construction_naming_the_field():
    for cls, fields in (
        (MLRSNetSchedule, ["hidden_size", "num_layers", "gate_layout", "num_stages", "gamma", "relative_max_scale"]),
        (LRController, ["max_change", "obs_clip", "obs_epsilon", "min_lr", "max_lr", "hidden_sizes", "probe_size"]),
    ):
        for field in fields:
            with pytest.raises(ValueError, match=field):
                cls(**{field: None})
