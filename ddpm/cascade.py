"""A cascade (Ho et al. 2021, *Cascaded Diffusion Models*): a base model samples small images, and a
super-resolution stage, a diffusion model of its own, turns each into a larger one.

The stage is the improved UNet with three more input channels: the low-resolution image, upsampled to the stage's
size and concatenated to x_t. That image is noised by the forward process to an augmentation level s, and the
network is told s (embedded like t): noise-conditioning augmentation (CDM, sec. 3.2). Training draws s uniformly in
0..aug_max_t, so the stage learns to ignore what a base gets wrong at the finest scales; sampling uses one fixed small
level, aug_t. Without it, CDM's cascades lost to their single-stage models.

The low-resolution training images are made exactly as the base's own training images: the project's loader at the
base's resolution (ddpm/data.py), from the same files, in the same order, with the same flips. Being fully
convolutional (no attention), the stage trains on random crops and samples whole images.

    run = load_run("weights/cpu64-sr")               # the stage; its base (config.base) is loaded with it
    images = generate(run.ema_model, run.diffusion, 32, labels=labels, guidance_scale=2)   # 64 px, uint8
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.data import to_model_input


def upsample(low: torch.Tensor, size: int) -> torch.Tensor:
    """The low-resolution images [B, 3, r, r] in [-1, 1], bilinearly upsampled to size x size (CDM, SR3)."""
    return F.interpolate(low.float(), size=(size, size), mode="bilinear", align_corners=False)


def stage_batch(high: torch.Tensor, low: torch.Tensor, *, flip: bool, crop: int | None,
                generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch of the stage from the same images at both resolutions (uint8 [B, 3, R, R] and [B, 3, r, r]):
    (x0, the upsampled clean low-resolution image), both in [-1, 1], flipped by the same coins and cropped at the same
    random place (crop: its side; None: whole images). Draws from `generator`: the coins, then the crop offsets."""
    device = generator.device if generator is not None else high.device
    if flip:
        coins = (torch.rand(high.shape[0], generator=generator, device=device) < 0.5).to(high.device)[:, None, None, None]
        high, low = torch.where(coins, high.flip(-1), high), torch.where(coins, low.flip(-1), low)
    x0 = to_model_input(high, flip=False)
    low_up = upsample(to_model_input(low, flip=False), x0.shape[-1])
    size = x0.shape[-1]
    if crop is None or crop == size:
        return x0, low_up
    # one random window per image: gather rows then columns with per-image offsets
    offsets = torch.randint(0, size - crop + 1, (2, x0.shape[0]), generator=generator, device=device).to(x0.device)
    span = torch.arange(crop, device=x0.device)
    rows = (offsets[0][:, None] + span)[:, None, :, None].expand(-1, 3, -1, size)
    cols = (offsets[1][:, None] + span)[:, None, None, :].expand(-1, 3, crop, -1)
    pick = lambda x: x.gather(2, rows).gather(3, cols)  # noqa: E731
    return pick(x0), pick(low_up)


class Conditioned(nn.Module):
    """The stage's network as a ``(x_t, t[, labels])`` model for the samplers and guidance: it adds the noised
    low-resolution image and its level. A batch of twice the images (guidance's labelled and null halves) gets the
    condition twice."""

    def __init__(self, net: nn.Module, cond: torch.Tensor, cond_t: torch.Tensor):
        super().__init__()
        self.net, self.cond, self.cond_t = net, cond, cond_t
        self.num_classes = getattr(net, "num_classes", 0)
        self.image_size = net.image_size

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        repeat = x.shape[0] // self.cond.shape[0]
        cond, cond_t = self.cond.repeat(repeat, 1, 1, 1), self.cond_t.repeat(repeat)
        return self.net(x, t, labels, cond=cond.to(x.dtype), cond_t=cond_t)


def augment(diffusion, low_up: torch.Tensor, level: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Noise-conditioning augmentation: the upsampled low-resolution image taken by the forward process to `level`
    (integer steps of the stage's own schedule; 0 is nearly clean)."""
    return diffusion.q_sample(low_up, level, noise)


class Cascade(nn.Module):
    """A base run and a super-resolution stage as one sampling model: generate() knows it (ddpm/sample.py). The
    labels and the guidance scale given are the base's; the stage is sampled plainly conditional on the same labels
    (one network call a step) at augmentation level aug_t."""

    def __init__(self, base, stage: nn.Module, stage_diffusion, aug_t: int):
        super().__init__()
        self.base_run = base  # None: a stage alone, which upscales given images (the trainer's grids)
        self.base = base.ema_model if base is not None else None
        self.base_diffusion = base.diffusion if base is not None else None
        self.stage = stage
        self.stage_diffusion = stage_diffusion
        self.aug_t = aug_t
        self.image_size = stage.image_size
        self.num_classes = getattr(stage, "num_classes", 0)

    @property
    def noise_size(self) -> int:
        """The side of the noise a sample starts from: the base's images."""
        return self.base.image_size

    @torch.no_grad()
    def sample(self, noise: torch.Tensor, labels: torch.Tensor | None, guidance_scale: float | None, *, sampler: str,
               steps: int | None, eta: float = 0.0, generator: torch.Generator, device, return_trajectory: bool = False,
               trajectory_frames: int = 50, progress: bool = False, guidance_interval: tuple[int, int] | None = None,
               grid: str | None = None, lambda_min: float | None = None):
        """Images at the stage's size in [-1, 1] from base noise [B, 3, r, r]: the base samples (guided by `labels` at
        `guidance_scale`), its images are rounded to 8 bits as its training images were, and the stage upscales
        them; the stage's noise comes from `generator` after the base's. With return_trajectory, also the frames of
        both (as GaussianDiffusion.sample gives them, half each): the base's upsampled, then the stage's.
        `guidance_interval` (the base's step indices) limits the base's guidance; `grid` and `lambda_min` place the
        steps of both."""
        from ddpm.data import to_uint8
        from ddpm.guidance import guided

        base = self.base if labels is None else guided(self.base, labels.to(device), guidance_scale, guidance_interval)
        solver = dict(grid=grid, lambda_min=lambda_min)
        frames = dict(return_trajectory=True, trajectory_frames=max(2, trajectory_frames // 2)) if return_trajectory else {}
        low = self.base_diffusion.sample(base, noise.shape, sampler=sampler, steps=steps, eta=eta, noise=noise,
                                         generator=generator, device=device, progress=progress, **frames, **solver)
        low, base_frames = low if return_trajectory else (low, None)
        out = self.upscale(to_uint8(low.float()), labels, sampler=sampler, steps=steps, generator=generator,
                           device=device, progress=progress, **frames, **solver)
        if not return_trajectory:
            return out
        images, stage_frames = out
        big = lambda x: F.interpolate(x.float(), size=(self.image_size,) * 2, mode="nearest")  # noqa: E731
        return images, [(t, big(x_t), big(x0)) for t, x_t, x0 in base_frames] + stage_frames

    @torch.no_grad()
    def upscale(self, low: torch.Tensor, labels: torch.Tensor | None, *, sampler: str, steps: int | None,
                generator: torch.Generator, device, progress: bool = False, **options):
        """64 px samples in [-1, 1] from low-resolution images `low` (uint8 [B, 3, r, r], as a base makes them):
        upsampled, noised to aug_t with noise drawn from `generator`, then sampled by the stage (`options`: the
        trajectory's and the grid's, as GaussianDiffusion.sample takes them)."""
        from ddpm.guidance import guided

        size = self.image_size
        low_up = upsample(to_model_input(low.to(device), flip=False), size)
        level = torch.full((low.shape[0],), self.aug_t, device=device, dtype=torch.long)
        noise = torch.randn(low_up.shape, device=device, generator=generator)
        model = Conditioned(self.stage, augment(self.stage_diffusion, low_up, level, noise), level)
        if self.num_classes:
            model = guided(model, labels.to(device), 1.0)
        start = torch.randn(low_up.shape, device=device, generator=generator)
        return self.stage_diffusion.sample(model, start.shape, sampler=sampler, steps=steps, noise=start,
                                           generator=generator, device=device, progress=progress, **options)


def load_base(config, stage_dir: Path, classes=None, device: str | torch.device = "cpu"):
    """The base run of a super-resolution stage (config.base, a shipped folder or run folder), checked against the
    stage: it samples at the stage's lowres and knows the same labels (`classes`, the stage's). One error line naming
    the folder if not."""
    from ddpm.config import display_path, resolve_path
    from ddpm.runfolder import load_run

    if not config.base:
        raise ValueError(f"{display_path(stage_dir)} is a super-resolution stage without a base: set its config's "
                         f"base to the folder that samples its {config.lowres} px images (e.g. weights/cpu-long)")
    path = resolve_path(config.base)
    if not path.exists():
        raise FileNotFoundError(f"{display_path(stage_dir)}: its base {config.base} does not exist; it samples the "
                                f"{config.lowres} px images the stage upscales (git checkout -- {config.base})")
    base = load_run(path, device)
    if base.config.lowres:
        raise ValueError(f"{display_path(stage_dir)}: its base {config.base} is itself a stage; chain one at a time")
    if base.config.resolution != config.lowres:
        raise ValueError(f"{display_path(stage_dir)}: its base {config.base} samples {base.config.resolution} px "
                         f"images, the stage upscales {config.lowres} px ones")
    if (base.classes is None) != (classes is None) or (classes is not None and base.classes.labels != classes.labels):
        raise ValueError(f"{display_path(stage_dir)}: its base {config.base} knows other labels than the stage")
    return base


def as_cascade(config, net: nn.Module, diffusion, run_dir: Path, classes, device):
    """A super-resolution stage's network as a Cascade with its base (loaded and checked), so that every sampler
    call makes full-size images from noise; any other network as it is."""
    if not config.lowres:
        return net
    return Cascade(load_base(config, run_dir, classes, device), net, diffusion, config.aug_t)


def lowres_images(config, data) -> torch.Tensor:
    """A stage's training images at its lowres (uint8), decoded by the loader that made the base's: the same files in
    the same order as `data` (the images at the stage's resolution), or one error line."""
    from ddpm.data import load_images

    low = load_images(config.dataset, config.lowres, limit=config.limit_images, split=config.split)
    if low.files != data.files:
        raise ValueError(f"lowres={config.lowres}: {config.dataset!r} at {config.lowres} px holds other images than at "
                         f"{config.resolution} px ({len(low)} vs {len(data)})")
    return low.images
