"""Figures: 4x8 sample grids, denoising strips, a GIF of a grid denoising, loss curves, schedule plots, histograms.

Every function writes a file and returns its path (matplotlib's Figure without pyplot: nothing global changes); the
notebook displays the file, so what a reader sees inline is exactly what is committed under figures/. Images are laid
out with Pillow, upscaled by whole factors (NEAREST) and titled at screen resolution, so that neither the notebook nor
the browser has to stretch (and blur) them.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure  # drawn straight to a file: no pyplot, no backend switch in a notebook
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

FIGURES_DIR = Path(__file__).resolve().parent.parent / "figures"


# Figures meant for a screen are written upscaled by an integer factor with NEAREST neighbour to at least MIN_WIDTH
# pixels: a 274 px grid shown in a 900 px notebook column would otherwise be stretched by the browser, which blurs it.
MIN_WIDTH = 768
GIF_FRAMES = 36  # frames of the denoising GIF; sample(..., trajectory_frames=GIF_FRAMES) gives exactly these
GIF_PIXELS = 20_000  # native pixels per GIF frame: 36 frames of pure noise stay under 0.8 MB
TITLE_SIZE = 20  # px, drawn at screen resolution (after the upscale) so that the text stays crisp


def _as_float01(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] or float [-1, 1] -> float [0, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    return (images.float().clamp(-1, 1) + 1) / 2


def _prepare(path: Path | str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def grid_image(images: torch.Tensor, *, nrow: int = 8, padding: int = 2) -> torch.Tensor:
    """The grid as a uint8 HxWx3 tensor on white padding (for PNGs, GIF frames and matplotlib)."""
    grid = make_grid(_as_float01(images), nrow=nrow, padding=padding, pad_value=1.0)
    return (grid * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0)


def _as_grid(images: torch.Tensor, nrow: int, padding: int, rows: int = 4) -> tuple[torch.Tensor, int]:
    """A batch [N, 3, H, W] (its first `rows` rows) or a laid-out grid [3, H, W] of nrow tiles a row (e.g. a run's
    samples/step-*.png read with torchvision.io.read_image; its top `rows` rows) -> (uint8 HxWx3 grid, the width of a
    full row of nrow tiles)."""
    if images.ndim == 3:
        tile = (images.shape[-1] - padding) // nrow  # tile + padding
        grid = grid_image(images[None, :, : rows * tile + padding], nrow=1, padding=0)
        return grid, grid.shape[1]
    # the nominal width depends on the tile size only, so a 4-image grid and a 32-image grid get the same scale
    return grid_image(images[: nrow * rows], nrow=nrow, padding=padding), nrow * (images.shape[-1] + padding) + padding


def _scale_for(native_width: int) -> int:
    """The integer factor that makes native_width pixels at least MIN_WIDTH wide."""
    return max(1, math.ceil(MIN_WIDTH / native_width))


def _upscale(image: torch.Tensor, factor: int) -> Image.Image:
    """uint8 HxWx3 -> a PIL image `factor` times larger, every pixel a crisp factor x factor square."""
    picture = Image.fromarray(image.cpu().numpy())  # a grid drawn on the GPU (periodic samples) too
    return picture.resize((picture.width * factor, picture.height * factor), Image.Resampling.NEAREST)


def _font_for(title: str, width: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at TITLE_SIZE px, smaller if the title would not fit in `width`."""
    size = TITLE_SIZE
    font = ImageFont.load_default(size=size)
    while font.getlength(title) > width - 8 and size > 8:
        size -= 1
        font = ImageFont.load_default(size=size)
    return font


def _save_panels(panels: Sequence[tuple[str | None, Image.Image]], path: Path | str, *, columns: int = 1,
                 gap: int = 12, heading: str | None = None) -> Path:
    """Lay panels out `columns` to a row on white, each under its title (if any), all under an optional heading, and
    write an optimised PNG."""
    title_height = int(1.6 * TITLE_SIZE) if any(title for title, _ in panels) else 0
    heading_height = int(1.8 * TITLE_SIZE) if heading else 0
    cell_w = max(p.width for _, p in panels)
    cell_h = title_height + max(p.height for _, p in panels)
    columns = min(columns, len(panels))
    rows = math.ceil(len(panels) / columns)
    width = columns * cell_w + (columns - 1) * gap
    canvas = Image.new("RGB", (width, heading_height + rows * cell_h + (rows - 1) * gap), "white")
    draw = ImageDraw.Draw(canvas)
    def centred(text: str | None, x: int, y: int, width: int) -> None:
        if text:
            draw.text((x + width // 2, y), text, fill="black", font=_font_for(text, width), anchor="mm")

    centred(heading, 0, heading_height // 2, width)
    for i, (title, panel) in enumerate(panels):
        x, y = (i % columns) * (cell_w + gap), heading_height + (i // columns) * (cell_h + gap)
        centred(title, x, y + title_height // 2, cell_w)
        canvas.paste(panel, (x + (cell_w - panel.width) // 2, y + title_height))
    canvas.save(_prepare(path), optimize=True)
    return Path(path)


def save_grid(images: torch.Tensor, path: Path | str, *, title: str | None = None, nrow: int = 8, padding: int = 2,
              scale: int | None = None) -> Path:
    """A grid PNG of (at most 4 rows of) images, under an optional title, upscaled to at least MIN_WIDTH pixels.

    The factor comes from the tile size (a full row of nrow tiles), so real and generated images of the same
    resolution show at the same size; scale=1 writes the native grid (a run's periodic samples/).
    """
    grid, native_width = _as_grid(images, nrow, padding)
    return _save_panels([(title, _upscale(grid, scale or _scale_for(native_width)))], path)


def save_images(images: torch.Tensor, folder: Path | str) -> list[Path]:
    """Each image as its own PNG, 00000.png, 00001.png, ... at its own resolution: no upscaling, padding or title, so
    other FID tools (pytorch-fid, clean-fid) can read the folder as it is. Existing files of those names are
    replaced."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = (_as_float01(images) * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    paths = [folder / f"{i:05d}.png" for i in range(len(pixels))]
    for image, path in zip(pixels, paths):
        Image.fromarray(image).save(path)
    return paths


def save_grid_row(grids: dict[str, torch.Tensor], path: Path | str, *, title: str | None = None, columns: int = 2,
                  nrow: int = 8, rows: int = 2, padding: int = 2, scale: int | None = None) -> Path:
    """Several grids in one PNG, `columns` to a row, each under its own title (the dict's key), all under `title`:
    e.g. one grid per sampler or per training step. Values: image batches, or laid-out grids [3, H, W]. Each shows
    `rows` rows of nrow images (2 by default: comparisons need fewer images than a 4x8 grid, and keep the notebook
    small). One factor for all, chosen so that the whole row is at least MIN_WIDTH wide."""
    laid_out = {label: _as_grid(images, nrow, padding, rows) for label, images in grids.items()}
    native_width = min(columns, len(grids)) * max(width for _, width in laid_out.values())
    factor = scale or _scale_for(native_width)
    return _save_panels([(label, _upscale(grid, factor)) for label, (grid, _) in laid_out.items()], path,
                        columns=columns, heading=title)


def _pick(trajectory: Sequence, count: int) -> list:
    """`count` frames evenly chosen by position, first and last included (the sampler spaced them by log-SNR)."""
    if len(trajectory) <= count:
        return list(trajectory)
    return [trajectory[i] for i in torch.linspace(0, len(trajectory) - 1, count).round().long().tolist()]


def save_denoising_strip(trajectory: Sequence[tuple[int, torch.Tensor, torch.Tensor]], path: Path | str, *,
                         rows: int = 4, columns: int = 8, title: str | None = None, scale: int | None = None) -> Path:
    """For each of `rows` samples, two rows from x_T (left) to x_0 (right) at `columns` frames of the trajectory:
    x_t above, the network's prediction x0_hat at the same step below, so that one sees the prediction sharpen long
    before the noise is gone. Upscaled like save_grid."""
    frames = _pick(trajectory, columns)
    blocks = []
    for r in range(min(rows, len(frames[0][1]))):
        pair = [x_t[r] for _, x_t, _ in frames] + [x0_hat[r] for _, _, x0_hat in frames]
        blocks.append(grid_image(torch.stack(pair), nrow=len(frames)))  # the x_t row above its x0_hat row
    gap = torch.full((4, blocks[0].shape[1], 3), 255, dtype=torch.uint8)  # sets the samples apart (padding is 2 px)
    strip = torch.cat([part for block in blocks for part in (gap, block)][1:])
    return _save_panels([(title, _upscale(strip, scale or _scale_for(strip.shape[1])))], path)


def _gif_layout(size: int) -> tuple[int, int]:
    """(images per side, per row) for GIF frames of size px images: as many as GIF_PIXELS allows, at most 4x4."""
    count = max(1, min(16, GIF_PIXELS // (2 * (size + 2) ** 2)))  # two sides, tiles padded by 2 px
    nrow = min(4, count)
    return count // nrow * nrow, nrow  # whole rows: 4x2 at 32 px, 2x1 at 64 px, 4x4 at 16 px


def save_denoising_gif(trajectory: Sequence[tuple[int, torch.Tensor, torch.Tensor]], path: Path | str, *,
                       frames: int = GIF_FRAMES, colors: int = 64, duration_s: float = 4.0,
                       hold_last_s: float = 2.0) -> Path:
    """An animated GIF of a few samples denoising: x_t on the left, x0_hat on the right, the last frame held.

    Written at native size (the notebook upscales it: show.show_animation), with `colors` colours and no dithering:
    noisy frames barely compress (about 0.9 byte a pixel), so the number of images is what keeps it under 1 MB.
    """
    count, nrow = _gif_layout(trajectory[0][1].shape[-1])
    pictures = []
    for _, x_t, x0_hat in _pick(trajectory, frames):
        left, right = grid_image(x_t[:count], nrow=nrow), grid_image(x0_hat[:count], nrow=nrow)
        gap = torch.full((left.shape[0], 4, 3), 255, dtype=torch.uint8)
        frame = Image.fromarray(torch.cat([left, gap, right], dim=1).cpu().numpy())
        pictures.append(frame.quantize(colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    per_frame_ms = max(20, round(1000 * duration_s / len(pictures)))
    durations = [per_frame_ms] * (len(pictures) - 1) + [round(1000 * hold_last_s)]
    pictures[0].save(_prepare(path), save_all=True, append_images=pictures[1:], duration=durations, loop=0)
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


def plot_distance_histograms(distances: dict[str, torch.Tensor], path: Path | str, *, bins: int = 30) -> Path:
    """Overlaid histograms (as densities, over shared bins) of nearest-neighbour distances, one per named set."""
    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    values = {label: torch.as_tensor(d, dtype=torch.float64).flatten() for label, d in distances.items()}
    everything = torch.cat(list(values.values()))
    edges = torch.linspace(everything.min().item(), everything.max().item(), bins + 1).tolist()
    for label, d in values.items():
        ax.hist(d.cpu().numpy(), bins=edges, density=True, alpha=0.5, label=f"{label} ({len(d)})")
    ax.set_xlabel("distance to the nearest neighbour (Inception pool features)")
    ax.set_ylabel("density")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize="small")
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
    """One row per schedule: the same image noised at t = 0, T/10, ..., T (tensors [K, 3, H, W] in [-1, 1]),
    upscaled like save_grid."""
    images = torch.cat(list(rows.values()))
    grid = grid_image(images, nrow=len(next(iter(rows.values()))))
    return _save_panels([(None, _upscale(grid, _scale_for(grid.shape[1])))], path)


def plot_long_run_scores(scores: Sequence[dict], guidance: Sequence[dict], path: Path | str) -> Path:
    """A long run's scores: KID and FID against images seen (one line per EMA half-life and guidance scale, from
    snapshot scores) on top, and against the guidance scale (one run's sweep) below; the real-vs-real floor of the
    same protocol dashed. Rows are benchmarks/long_run.py's and benchmarks/guidance.py's JSON lines."""
    fig = Figure(figsize=(10, 7))
    axes = fig.subplots(2, 2)
    floor = next((r for r in reversed(scores) if "floor_kid_mean" in r), None)
    lines = sorted({(r["ema_half_life_kimg"], r["guidance_scale"]) for r in scores},
                   key=lambda line: (line[0], -1 if line[1] is None else line[1]))
    for half_life, scale in lines:
        mine = sorted((r for r in scores if (r["ema_half_life_kimg"], r["guidance_scale"]) == (half_life, scale)),
                      key=lambda r: r["kimg"])
        kimg = [r["kimg"] for r in mine]
        label = f"EMA half-life {half_life:g}k images" + ("" if scale is None else f", guidance {scale:g}")
        axes[0, 0].errorbar(kimg, [1e3 * r["kid_mean"] for r in mine], yerr=[1e3 * r["kid_std"] for r in mine],
                            marker="o", capsize=3, label=label)
        axes[0, 1].plot(kimg, [r["fid"] for r in mine], marker="o", label=label)
    if scores:
        axes[0, 0].set_title("EMA snapshots", fontsize=10)
    if guidance:
        step = guidance[-1].get("step")
        axes[1, 0].set_title("the final weights" + ("" if step is None else f" (step {step:,})")
                             + " against the guidance scale", fontsize=10)
    rows = sorted(guidance, key=lambda r: r["guidance_scale"])
    scales = [r["guidance_scale"] for r in rows]
    axes[1, 0].errorbar(scales, [1e3 * r["kid_mean"] for r in rows], yerr=[1e3 * r["kid_std"] for r in rows],
                        marker="o", capsize=3, color="C4", label="shipped weights")
    axes[1, 1].plot(scales, [r["fid"] for r in rows], marker="o", color="C4", label="shipped weights")
    for (row, col), what, x in (((0, 0), "KID x 1e3", "thousands of images seen"),
                                ((0, 1), "FID", "thousands of images seen"),
                                ((1, 0), "KID x 1e3", "guidance scale (0: unconditional, 1: conditional, unguided)"),
                                ((1, 1), "FID", "guidance scale (0: unconditional, 1: conditional, unguided)")):
        ax = axes[row, col]
        if floor is not None:
            value = 1e3 * floor["floor_kid_mean"] if what.startswith("KID") else floor["floor_fid"]
            ax.axhline(value, color="grey", linestyle="--", label="real vs real (floor)")
        ax.set_xlabel(x)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(_prepare(path), dpi=80)
    return Path(path)
