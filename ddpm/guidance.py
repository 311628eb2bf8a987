"""Classifier-free guidance (Ho & Salimans 2022): sample a class-conditional network as a blend of its conditional
and its unconditional (null-label) predictions,

    eps = eps_null + s (eps_label - eps_null).

s = 1 is plain conditional sampling and s = 0 unconditional sampling; s > 1 pushes each sample further towards what
makes it its class, trading diversity for fidelity. The blend is a model ``(x_t, t) -> prediction`` like any other,
so every sampler of GaussianDiffusion (DDPM, DDIM, DPM-Solver++, trajectories and GIFs) takes it as it is. With
v-prediction the same blend of v is the blend of eps, since both are linear in the output at a given x_t and t.
"""
from __future__ import annotations

import torch
from torch import nn


def null_labels(model: nn.Module, batch: int, device) -> torch.Tensor:
    """The null label (index num_classes) for every image of a batch."""
    return torch.full((batch,), model.num_classes, dtype=torch.long, device=device)


def guided(model: nn.Module, labels: torch.Tensor, scale: float = 1.0, interval: tuple[int, int] | None = None):
    """`model` (a conditional UNet) sampled towards `labels` [B] (on its device) with guidance scale `scale`.

    s = 1 and s = 0 call the network once, on the labels or on the null label, so they give exactly the conditional
    or the unconditional prediction. Any other s makes one forward pass over both halves, batched. With `interval`
    (t_low, t_high), indices as solvers.sigma_interval gives them, guidance applies only at those steps (Kynkaanniemi
    et al. 2024: guidance at high noise costs diversity, at low noise it does little); every other step is the plain
    conditional prediction, one network call."""
    if not getattr(model, "num_classes", 0):
        raise ValueError("guidance needs a class-conditional network (num_classes > 0); this one is unconditional")
    if not scale >= 0:
        raise ValueError(f"guidance_scale must be 0 or more, got {scale}")

    # The labels each step sees, made once here rather than at every sampler step
    null = null_labels(model, len(labels), labels.device)
    step_labels = {1: labels, 0: null}.get(scale, torch.cat([labels, null]))

    def forward(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if labels.shape != t.shape:
            raise ValueError(f"guidance: {labels.shape[0]} labels for a batch of {t.shape[0]} images")
        if scale in (0, 1):
            return model(x, t, step_labels)
        if interval is not None and not interval[0] <= int(t[0]) <= interval[1]:
            return model(x, t, labels)  # one call: the sampler's steps share one t across the batch
        conditional, unconditional = model(torch.cat([x, x]), torch.cat([t, t]), step_labels).chunk(2)
        return unconditional + scale * (conditional - unconditional)

    return forward


def network_calls(scale: float | None) -> int:
    """Network evaluations per image and sampler step: 2 with guidance (both halves), 1 without or at s = 0 or 1."""
    return 1 if scale is None or scale in (0, 1) else 2
