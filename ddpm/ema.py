"""Exponential moving average of the weights, with the decay given as a half-life in images (Karras et al. 2022).

A half-life of H images means the average forgets half of its past every H images, whatever the batch size:
decay per step = 0.5 ** (batch / H). During warm-up the half-life is capped at ``rampup`` x images seen, so the
average does not drag the random initialisation along for the first steps.
"""
from __future__ import annotations

from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_decay(images_seen: int, batch_size: int, half_life_kimg: float, rampup: float | None = 0.05) -> float:
    half_life = half_life_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_size / max(half_life, 1e-8))


class EMA(AveragedModel):
    """``AveragedModel`` whose decay is set for every update from the images seen (a Python float: no GPU sync)."""

    def __init__(self, model: nn.Module, half_life_kimg: float, rampup: float | None = 0.05):
        super().__init__(model, multi_avg_fn=get_ema_multi_avg_fn(0.0), use_buffers=True)
        self.half_life_kimg = half_life_kimg
        self.rampup = rampup
        self.requires_grad_(False)

    def update(self, model: nn.Module, images_seen: int, batch_size: int) -> float:
        decay = ema_decay(images_seen, batch_size, self.half_life_kimg, self.rampup)
        self.multi_avg_fn = get_ema_multi_avg_fn(decay)
        self.update_parameters(model)
        return decay
