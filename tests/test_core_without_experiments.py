"""The core (trainer, callback, schedule, controller, Hub I/O, the CLI's schedule commands) never needs
``mlrsnet_hf.experiments``: it imports and works in a process where that subpackage cannot be imported."""

import subprocess
import sys
import textwrap

from conftest import REPO

SCRIPT = textwrap.dedent(
    """
    import importlib.abc
    import sys


    class NoExperiments(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mlrsnet_hf.experiments" or name.startswith("mlrsnet_hf.experiments."):
                raise ImportError(f"{name} is made unimportable by the test")
            return None


    sys.meta_path.insert(0, NoExperiments())

    import torch

    import mlrsnet_hf
    from mlrsnet_hf import LRController, MLRSNetCallback, MLRSNetConfig, MLRSNetSchedule, MLRSNetTrainer
    from mlrsnet_hf.cli import main
    from mlrsnet_hf.hub import ScheduleFileError, load_any_schedule

    try:
        import mlrsnet_hf.experiments  # noqa: F401
    except ImportError:
        pass
    else:
        raise AssertionError("the finder did not block mlrsnet_hf.experiments")

    out = sys.argv[1]
    torch.manual_seed(0)
    schedule = MLRSNetSchedule(hidden_size=8, num_stages=2, gamma=0.5)
    schedule.save_pretrained(out + "/schedule")
    loaded = MLRSNetSchedule.from_pretrained(out + "/schedule")
    for a, b in zip(schedule.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)
    assert isinstance(load_any_schedule(out + "/schedule"), MLRSNetSchedule)
    assert main(["info", out + "/schedule"]) == 0
    assert MLRSNetCallback and MLRSNetConfig and MLRSNetTrainer and LRController and ScheduleFileError
    loaded_experiments = sorted(m for m in sys.modules if m.startswith("mlrsnet_hf.experiments"))
    assert not loaded_experiments, loaded_experiments
    print("core ok", mlrsnet_hf.__version__)
    """
)


def test_core_imports_and_saves_without_the_experiments_subpackage(tmp_path):
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "core ok" in out.stdout
    assert (tmp_path / "schedule" / "config.json").is_file()
