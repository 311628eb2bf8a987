"""Figures and the command line, end to end on a tiny run."""
import subprocess
import sys

import pytest
import torch
from PIL import Image

from ddpm import viz
from ddpm.cli import main
from ddpm.config import REPO_ROOT
from ddpm.train import train


def test_grid_is_4x8(tmp_path):
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    path = viz.save_grid(images, tmp_path / "g" / "grid.png")
    assert Image.open(path).size == (8 * 34 + 2, 4 * 34 + 2)


def test_strip_gif_and_curves(tmp_path):
    trajectory = [(t, torch.rand(32, 3, 16, 16) * 2 - 1) for t in (100, 75, 50, 25, 0)]
    strip = viz.save_denoising_strip(trajectory, tmp_path / "strip.png", columns=5, rows=2)
    assert Image.open(strip).size == (5 * 18 + 2, 2 * 18 + 2)
    gif = Image.open(viz.save_denoising_gif(trajectory, tmp_path / "a.gif"))
    assert gif.n_frames == 5 and gif.size == (8 * 18 + 2, 4 * 18 + 2)
    stats = [{"images_seen": 100 * i, "loss": 1.0 / i} for i in range(1, 20)]
    assert viz.plot_loss_curves({"a": stats, "b": stats[:3]}, tmp_path / "loss.png").stat().st_size > 1000


def test_cli_train_then_sample(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["train", "--profile", "smoke", "--runs-dir", runs, "--train-steps", "2", "--base-channels", "8",
                 "--limit-images", "8", "--batch-size", "2", "--no-progress"]) == 0
    run_dir = tmp_path / "runs" / "smoke-unet-flowers102-32px"
    assert f"run folder: {run_dir}" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "4", "--steps", "3", "--out", str(out),
                 "--gif", str(tmp_path / "g.gif"), "--device", "cpu"]) == 0
    assert Image.open(out).size == (4 * 34 + 2, 34 + 2) and (tmp_path / "g.gif").exists()
    assert "from the EMA weights" in capsys.readouterr().out


def test_cli_bad_input_is_one_clear_line(tmp_path, capsys):
    assert main(["train", "--profile", "smoke", "--batch-size", "lots"]) == 2
    assert "error: config field 'batch_size': cannot read 'lots'" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err
    assert main(["fid", "--checkpoint", str(tmp_path / "nowhere")]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_python_dash_m_ddpm_help():
    result = subprocess.run([sys.executable, "-m", "ddpm", "--help"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert result.returncode == 0 and "train" in result.stdout and "sample" in result.stdout
