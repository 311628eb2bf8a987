"""Sampling from a trained run, in batches: the shape of NVlabs/edm's example.py.

    run = load_run("runs/cpu-unet-flowers102-32px")          # raw and EMA weights
    images = generate(run.ema_model, run.diffusion, 32)      # uint8 [32, 3, 32, 32], from the EMA weights

A class-conditional run also takes labels (class indices) and a guidance scale:

    labels = run.classes.draw(32) or torch.full((32,), run.classes.index("sunflower"))
    images = generate(run.ema_model, run.diffusion, 32, labels=labels, guidance_scale=3)
"""
from __future__ import annotations

import math
import weakref
from typing import Sequence

import torch
from torch import nn

from ddpm.cascade import Cascade
from ddpm.data import to_uint8
from ddpm.diffusion import GaussianDiffusion
from ddpm.distributed import compile_module
from ddpm.guidance import guided
from ddpm.progress import progress_bar
from ddpm.solvers import sigma_interval


_compiled: "weakref.WeakKeyDictionary[nn.Module, nn.Module]" = weakref.WeakKeyDictionary()


def compiled(model: nn.Module) -> nn.Module:
    """torch.compile of the network, made once per model: the sampler's Python loop stays eager (compiling it would
    recompile for every time step), and every step reuses the network's graph."""
    if model not in _compiled:
        _compiled[model] = compile_module(model)
    return _compiled[model]


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
    channels_last: bool = True,
    compile: bool = False,
    progress: bool = True,
    labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
    grid: str | None = None,
    lambda_min: float | None = None,
    guidance_interval: tuple[float, float] | None = None,
) -> torch.Tensor:
    """`num_images` samples as uint8 [N, 3, R, R] on the CPU.

    Every batch has the same size, min(batch_size, num_images), and the surplus of the last one is dropped: one
    compiled graph (compile=True) then serves the whole call. Batch i uses seed + i, so image k is the same whatever
    num_images is. The network runs in channels_last (NHWC: faster on CUDA and on the CPU), and on CUDA in bf16
    autocast (amp).
    DDPM ignores `steps` (always all T).

    A class-conditional model (num_classes > 0) needs `labels`, one class index per image, and is sampled with
    classifier-free guidance of scale `guidance_scale` (default 1: plain conditional; 0: unconditional, and then
    labels may be left out), only at the steps whose sigma lies in `guidance_interval` (low, high] if given. An
    unconditional model takes neither. `grid` and `lambda_min` place the sampler's steps (ddpm/solvers.py)."""
    device = torch.device(device)
    model = model.to(device).eval()
    diffusion = diffusion.to(device)
    size = getattr(model, "image_size", None)
    if size is None:
        raise ValueError("the model has no image_size attribute: pass a ddpm UNet or BaselineUNet")
    if num_images < 1:
        raise ValueError(f"num_images must be positive, got {num_images}")
    labels, guidance_scale = _check_labels(model, num_images, labels, guidance_scale)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    cascade = isinstance(model, Cascade)  # a base and a super-resolution stage: noise at the base's size
    net = compiled(model) if compile and not cascade else model
    noise_size = model.noise_size if cascade else size
    solver = dict(grid=grid, lambda_min=lambda_min)
    if guidance_interval is not None and labels is None:
        raise ValueError("guidance_interval needs a class-conditional model sampled with labels")
    base_diffusion = model.base_diffusion if cascade else diffusion  # whose steps the guidance interval counts
    interval = sigma_interval(base_diffusion, *guidance_interval) if guidance_interval is not None else None
    batch = min(batch_size, num_images)
    batches = range(math.ceil(num_images / batch))
    out = []
    for i in progress_bar(batches, desc=f"{sampler} batches", disable=not progress or len(batches) < 2):
        generator = torch.Generator(device=device).manual_seed(seed + i)
        noise = torch.randn((batch, 3, noise_size, noise_size), device=device, generator=generator)
        step_model, batch_labels = net, None
        if labels is not None:  # this batch's labels (the surplus images of the last one take the first labels)
            batch_labels = labels[torch.arange(i * batch, (i + 1) * batch) % num_images]
            step_model = net if cascade else guided(net, batch_labels.to(device), guidance_scale, interval)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
            if cascade:
                x = model.sample(noise.contiguous(memory_format=memory_format), batch_labels, guidance_scale,
                                 sampler=sampler, steps=None if sampler == "ddpm" else steps, eta=eta,
                                 generator=generator, device=device, guidance_interval=interval, **solver)
            else:
                x = diffusion.sample(
                    step_model, noise.shape, sampler=sampler, steps=None if sampler == "ddpm" else steps, eta=eta,
                    noise=noise.contiguous(memory_format=memory_format), generator=generator, device=device,
                    progress=progress and len(batches) < 2, **solver,
                )
        out.append(to_uint8(x.float()).cpu())
    return torch.cat(out)[:num_images]


def _check_labels(model: nn.Module, num_images: int, labels, guidance_scale):
    """(labels or None, scale) for generate(): labels only for a conditional model, one per image; a conditional model
    without labels only at scale 0 (unconditional: all null labels)."""
    conditional = bool(getattr(model, "num_classes", 0))
    if not conditional:
        if labels is not None or guidance_scale is not None:
            raise ValueError("labels / guidance_scale: this model is unconditional (num_classes=0); they need a "
                             "class-conditional run")
        return None, None
    scale = 1.0 if guidance_scale is None else float(guidance_scale)
    if labels is None:
        if scale != 0:
            raise ValueError("a class-conditional model needs labels (one class index per image, e.g. "
                             "run.classes.draw(n)), or guidance_scale=0 for unconditional samples")
        labels = torch.full((num_images,), model.num_classes, dtype=torch.long)
    labels = torch.as_tensor(labels, dtype=torch.long).flatten().cpu()
    if len(labels) != num_images:
        raise ValueError(f"labels: got {len(labels)} labels for {num_images} images")
    if labels.min() < 0 or labels.max() > model.num_classes:
        raise ValueError(f"labels must be class indices 0..{model.num_classes - 1} (or {model.num_classes}, the null "
                         f"label), got {labels.min().item()}..{labels.max().item()}")
    return labels, scale


def slerp(a: torch.Tensor, b: torch.Tensor, weights: Sequence[float]) -> torch.Tensor:
    """Spherical interpolation from noise `a` (weight 0) to noise `b` (weight 1): a tensor [len(weights), *a.shape].

    High-dimensional Gaussian noise lies near a sphere of radius sqrt(d); the straight line between two draws passes
    inside it (its midpoint has 1/sqrt(2) of their norm), through noise the network never saw. The arc stays on it."""
    if a.shape != b.shape:
        raise ValueError(f"slerp needs two tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    u, v = a.flatten().double(), b.flatten().double()
    omega = torch.arccos((u @ v / (u.norm() * v.norm())).clamp(-1, 1))
    w = torch.as_tensor(list(weights), dtype=torch.float64)[:, None]
    mixed = (torch.sin((1 - w) * omega) * u + torch.sin(w * omega) * v) / torch.sin(omega)
    return mixed.reshape(len(w), *a.shape).to(a.dtype)
