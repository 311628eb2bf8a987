"""The package's reorganisation (issue 32) kept training bit for bit, and keeps old checkpoints resuming exactly.

The "before" is the package as it was at REFERENCE_COMMIT, the last commit before the split, taken out of this
clone's git history (`git archive`) and run in a subprocess beside today's code, on the same machine: so the test
compares two programs, not a stored number that another CPU would round differently.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ddpm.config import REPO_ROOT

REFERENCE_COMMIT = "c83c578"  # the last commit before ddpm/files.py, runfolder.py, evaluate.py ... (issue 32)
STEPS, STOP_AT = 90, 60  # smoke: a checkpoint every 30 steps, EMA and warm-up in play, logs every 10
TIMING_FIELDS = {"seconds", "images_per_s"}

TRAIN = """
import sys
from ddpm.config import get_config
from ddpm.train import train
runs_dir, steps, until = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
config = get_config("smoke", use_env=False, runs_dir=runs_dir, train_steps=steps, progress=False)
train(config, until_step=until or None, verbose=False)
print(config.run_dir)
"""


def reference_package(tmp_path: Path) -> Path:
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.fail("this test needs the project's git history (a clone, not a copy of the files)")
    out = tmp_path / "reference"
    out.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", REFERENCE_COMMIT, "ddpm"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    return out


def train_with(package_root: Path, runs_dir: Path, steps: int, until: int = 0) -> Path:
    """A smoke run trained by the package under package_root, in a fresh process; returns its run folder."""
    env = {**os.environ, "PYTHONPATH": str(package_root), "DDPM_DATA_DIR": str(REPO_ROOT / "data")}
    env = {k: v for k, v in env.items() if not k.startswith("DDPM_") or k == "DDPM_DATA_DIR"}
    done = subprocess.run([sys.executable, "-c", TRAIN, str(runs_dir), str(steps), str(until)], env=env,
                          capture_output=True, text=True, cwd=package_root)
    assert done.returncode == 0, done.stderr[-2000:]
    return Path(done.stdout.strip().splitlines()[-1])


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Equal to the bit: tensors by torch.equal, everything else by ==, the wall-clock time aside."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        keys = set(a) - TIMING_FIELDS
        assert keys == set(b) - TIMING_FIELDS, f"{where}: keys {sorted(keys ^ (set(b) - TIMING_FIELDS))}"
        for key in keys:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def stats(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]


def checkpoint(run_dir: Path) -> dict:
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    state.pop("config")  # fields may be added; resuming checks the saved config against today's (below)
    return state


def test_smoke_training_is_bit_for_bit_the_one_before_the_split_and_its_checkpoint_resumes_exactly(tmp_path):
    before = train_with(reference_package(tmp_path), tmp_path / "before", STEPS, until=STOP_AT)
    after = train_with(REPO_ROOT, tmp_path / "after", STEPS, until=STOP_AT)
    assert checkpoint(before)["step"] == STOP_AT
    assert_same(checkpoint(before), checkpoint(after))  # weights, EMA, optimiser, schedule, RNG streams
    assert_same(stats(before), stats(after), "stats.jsonl")

    # today's code resumes the old checkpoint exactly as it resumes its own
    assert train_with(REPO_ROOT, tmp_path / "before", STEPS) == before
    train_with(REPO_ROOT, tmp_path / "after", STEPS)
    assert checkpoint(before)["step"] == STEPS
    assert_same(checkpoint(before), checkpoint(after))
    assert_same(stats(before), stats(after), "stats.jsonl")
