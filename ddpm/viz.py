"""Figures: 4x8 sample grids, denoising strips, a GIF of a grid denoising, loss curves, schedule plots.

Every function writes a file and returns its path (matplotlib's Figure without pyplot: nothing global changes); the notebook displays the file, so what a reader sees inline is
exactly what is committed under figures/.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure  # drawn straight to a file: no pyplot, no backend switch in a notebook
from torchvision.utils import make_grid, save_image

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"


def _as_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    return (images.float().clamp(-1, 1) + 1) / 2


def _prepare(path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def save_grid(images: torch.Tensor, path: Path | str, *, nrow: int = 8, padding: int = 2) -> Path:
    """A grid PNG (4x8 for 32 images), via torchvision's make_grid/save_image."""
    path = _prepare(path)
    save_image(_as_float01(images[: nrow * 4] if len(images) > nrow * 4 else images), path, nrow=nrow, padding=padding)
    return path


def grid_image(images: torch.Tensor, *, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """The grid as a uint8 HxWx3 array-like tensor (for GIF frames and matplotlib)."""
    grid = make_grid(_as_float01(images), nrow=nrow, padding=padding, pad_value=1.0)
    return (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


def save_denoising_strip(trajectory: Sequence[tuple[int, torch.Tensor]], path: Path | str, *, columns: int = 10,
                         rows: int = 4) -> Path:
    """Rows of images, each going left to right from x_T to x_0 at `columns` evenly chosen steps of the trajectory."""
    picks = torch.linspace(0, len(trajectory) - 1, columns).round().long().tolist()
    frames = torch.stack([trajectory[i][1][:rows] for i in picks], dim=1)  # [rows, columns, 3, H, W]
    save_image(_as_float01(frames.flatten(0, 1)), _prepare(path), nrow=columns, padding=2, pad_value=1.0)
    return Path(path)


def save_denoising_gif(trajectory: Sequence[tuple[int, torch.Tensor]], path: Path | str, *, nrow: int = 8,
                       duration_s: float = 4.0, hold_last_s: float = 1.5) -> Path:
    """An animated GIF of a whole grid denoising (imageio), holding the final frame a moment."""
    import imageio.v3 as iio

    frames = [grid_image(x[:32], nrow=nrow).numpy() for _, x in trajectory]
    per_frame_ms = max(20, int(1000 * duration_s / len(frames)))
    durations = [per_frame_ms] * (len(frames) - 1) + [int(1000 * hold_last_s)]
    iio.imwrite(_prepare(path), frames, extension=".gif", duration=durations, loop=0)
    return Path(path)


def plot_loss_curves(curves: dict[str, Sequence[dict]], path: Path | str, *, smooth: int = 5) -> Path:
    """Training loss against images seen, one line per run (from stats.jsonl records), lightly smoothed."""
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    for label, stats in curves.items():
        if not stats:
            continue
        x = torch.tensor([s["images_seen"] for s in stats], dtype=torch.float64) / 1000
        y = torch.tensor([s["loss"] for s in stats], dtype=torch.float64)
        k = min(smooth, len(y))
        y_smooth = torch.nn.functional.avg_pool1d(y[None, None], k, stride=1, padding=0)[0, 0] if k > 1 else y
        ax.plot(x[k - 1:] if k > 1 else x, y_smooth, label=label)
    ax.set_xlabel("thousands of images seen")
    ax.set_ylabel("training loss (MSE)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(_prepare(path), dpi=120)
    return Path(path)


def plot_schedules(diffusions: dict, path: Path | str) -> Path:
    """alpha-bar_t and log-SNR_t = log(alpha-bar / (1 - alpha-bar)) for each named schedule."""
    fig = Figure(figsize=(10, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    for name, diffusion in diffusions.items():
        alpha_bar = diffusion.alpha_bar.double().cpu()
        t = torch.arange(1, len(alpha_bar) + 1) / len(alpha_bar)
        ax1.plot(t, alpha_bar, label=name)
        ax2.plot(t, torch.log(alpha_bar / (1 - alpha_bar)), label=name)
    ax1.set(xlabel="t / T", ylabel="alpha-bar_t", title="signal kept")
    ax2.set(xlabel="t / T", ylabel="log SNR", title="log signal-to-noise ratio")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(_prepare(path), dpi=120)
    return Path(path)


def save_noising_rows(rows: dict[str, torch.Tensor], path: Path | str) -> Path:
    """One row per schedule: the same image noised at t = 0, T/10, ..., T (tensors [K, 3, H, W] in [-1, 1])."""
    images = torch.cat(list(rows.values()))
    save_image(_as_float01(images), _prepare(path), nrow=len(next(iter(rows.values()))), padding=2, pad_value=1.0)
    return Path(path)
