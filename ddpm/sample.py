"""Sampling from a trained run, in batches: the shape of NVlabs/edm's example.py.

    run = load_run("runs/cpu-unet-flowers102-32px")          # raw and EMA weights
    images = generate(run.ema_model, run.diffusion, 32)      # uint8 [32, 3, 32, 32], from the EMA weights
"""
from __future__ import annotations

import time

import torch
from torch import nn

from ddpm.data import to_uint8
from ddpm.diffusion import GaussianDiffusion
from ddpm.progress import progress_bar


@torch.no_grad()
def generate(
    model: nn.Module,
    diffusion: GaussianDiffusion,
    num_images: int,
    *,
    batch_size: int = 64,
    sampler: str = "ddim",
    steps: int | None = 100,
    eta: float = 0.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    amp: bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """`num_images` samples as uint8 [N, 3, R, R] on the CPU. Batch i uses seed + i, so results do not depend on
    how many batches run before it. DDPM ignores `steps` (always all T)."""
    device = torch.device(device)
    model = model.to(device).eval()
    diffusion = diffusion.to(device)
    size = getattr(model, "image_size", None)
    if size is None:
        raise ValueError("the model has no image_size attribute: pass a ddpm UNet or BaselineUNet")
    out = []
    batches = range(0, num_images, batch_size)
    for i, start in enumerate(progress_bar(batches, desc=f"{sampler} batches", disable=not progress or len(batches) < 2)):
        n = min(batch_size, num_images - start)
        generator = torch.Generator(device=device).manual_seed(seed + i)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            x = diffusion.sample(
                model, (n, 3, size, size), sampler=sampler, steps=None if sampler == "ddpm" else steps, eta=eta,
                generator=generator, device=device, progress=progress and len(batches) < 2,
            )
        out.append(to_uint8(x.float()).cpu())
    return torch.cat(out)


def time_sampler(model, diffusion, num_images: int, **kwargs) -> tuple[torch.Tensor, float]:
    """generate() and its wall-clock seconds (synchronising CUDA so the figure is honest)."""
    device = torch.device(kwargs.get("device", "cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    images = generate(model, diffusion, num_images, **kwargs)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return images, time.perf_counter() - start
