"""Compatibility with the released MLR-SNet checkpoints (../shared/official; skipped when absent)."""

import json

import pytest
import torch
from conftest import CHECKPOINTS, reference_unroll

from mlrsnet_hf import MLRSNetSchedule, ScheduleFileError, convert_official


def released_weights(path):
    """The README's documented layout, read straight from the released file."""
    sd = torch.load(path, map_location="cpu", weights_only=True)
    cell = {
        "i0w": sd["layer1.fc_i2h.0.weight"], "i0b": sd["layer1.fc_i2h.0.bias"],
        "i2w": sd["layer1.fc_i2h.2.weight"], "i2b": sd["layer1.fc_i2h.2.bias"],
        "h0w": sd["layer1.fc_h2h.0.weight"], "h0b": sd["layer1.fc_h2h.0.bias"],
        "h2w": sd["layer1.fc_h2h.2.weight"], "h2b": sd["layer1.fc_h2h.2.bias"],
    }  # fmt: skip
    return [cell], {"w": sd["layer3.weight"], "b": sd["layer3.bias"]}


@pytest.fixture
def converted(official_dir, tmp_path):
    return convert_official([official_dir / name for name in CHECKPOINTS], tmp_path / "official")


def test_unroll_equals_documented_forward(official_dir, converted, released_losses):
    assert len(released_losses) == 400
    for stage, name in enumerate(CHECKPOINTS):
        ref = reference_unroll(*released_weights(official_dir / name), released_losses, layout="ifgo")
        ours = converted.unroll(released_losses, stage=stage).double()
        assert (ours - ref).abs().max().item() < 1e-6, name


def test_converted_repo(converted, tmp_path, released_losses):
    repo = tmp_path / "official"
    config = json.loads((repo / "config.json").read_text())
    assert config["num_stages"] == 3 and config["gamma"] == "auto" and config["gate_layout"] == "ifgo"
    assert config["stage_starts"] == pytest.approx([0, 1 / 3, 2 / 3])
    assert config["meta_training"]["dataset"] == "uoft-cs/cifar10" and config["meta_training"]["epochs"] == 200
    loaded = MLRSNetSchedule.from_pretrained(repo)
    for stage in range(3):
        assert torch.equal(loaded.unroll(released_losses, stage=stage), converted.unroll(released_losses, stage=stage))


def test_released_transfer_recipe(converted):
    """Thirds, state carried across the weight swaps, gamma recomputed from L and C at each stage start."""
    n, classes = 300, 100
    losses = torch.linspace(4.6, 0.2, n).tolist()
    averages = [4.5, 1.1, 0.4]
    run = converted.start(num_classes=classes)
    lrs = []
    for step, loss in enumerate(losses):
        stage = run.stage_at(step, n)
        if stage != run.stage:
            run.enter_stage(stage, average_loss=averages[stage])
        lrs.append(run.step(loss))
    assert converted.stage_boundaries(n) == [0, 100, 200]
    gammas = [abs(L**0.5 * torch.tensor(L * classes).log().item() / classes**0.25 / 4) for L in averages]
    assert run.gammas == pytest.approx(gammas, rel=1e-6)
    state = converted.stages[0].initial_state()
    for step, loss in enumerate(losses):
        stage = converted.stage_at(step, n)
        p, state = converted.stages[stage](loss, state)
        assert lrs[step] == pytest.approx(gammas[stage] * p.item(), rel=1e-5)


def test_only_the_ifgo_layout_reproduces_the_checkpoints(converted, released_losses):
    # The README's finding: with the meta-training script's cell the later checkpoints are near-constant.
    shifted = MLRSNetSchedule(num_stages=3, gate_layout="ifog_shifted")
    shifted.load_state_dict(converted.state_dict())
    for stage in (1, 2):
        p_ifgo = converted.unroll(released_losses, stage=stage)
        p_shifted = shifted.unroll(released_losses, stage=stage)
        assert (p_ifgo.max() - p_ifgo.min()).item() > 0.3
        assert (p_shifted.max() - p_shifted.min()).item() < 0.05


def test_bad_checkpoints(official_dir, tmp_path):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((official_dir / CHECKPOINTS[0]).read_bytes()[:500])
    with pytest.raises(ScheduleFileError, match="truncated.pth is truncated or not a released MLR-SNet checkpoint"):
        convert_official([truncated])
    wrong = tmp_path / "wrong.pth"
    torch.save({"weight": torch.zeros(3)}, wrong)
    with pytest.raises(ScheduleFileError, match="wrong.pth is not a released MLR-SNet checkpoint"):
        convert_official([wrong])
    with pytest.raises(ScheduleFileError, match="does not exist"):
        convert_official([tmp_path / "missing.pth"])
