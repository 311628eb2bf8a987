"""Exponential moving average of the weights, with the decay given as a half-life in images (Karras et al. 2022).

A half-life of H images means the average forgets half of its past every H images, whatever the batch size:
decay per step = 0.5 ** (batch / H). During warm-up the half-life is capped at ``rampup`` x images seen, so the
average does not drag the random initialisation along for the first steps.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn


def ema_half_life(images_seen: int, half_life_kimg: float, rampup: float | None = 0.05) -> float:
    """The half-life in images in force after `images_seen` images: the configured one, or less during the ramp-up.
    It reaches the configured value after half_life / rampup images (see Config.ema_full_after_kimg)."""
    half_life = half_life_kimg * 1000
    if rampup is not None:
        half_life = min(half_life, images_seen * rampup)
    return half_life


def ema_decay(images_seen: int, batch_size: int, half_life_kimg: float, rampup: float | None = 0.05) -> float:
    return 0.5 ** (batch_size / max(ema_half_life(images_seen, half_life_kimg, rampup), 1e-8))


class EMA(AveragedModel):
    """``AveragedModel`` (its state_dict layout, ``module.*`` + ``n_averaged``) updated with a decay set per step from
    the images seen.

    AveragedModel.update_parameters asks ``n_averaged == 0`` on the device at every call, which makes the host wait
    for the GPU once per training step; here the host remembers whether the first update happened instead.
    """

    def __init__(self, model: nn.Module, half_life_kimg: float, rampup: float | None = 0.05):
        super().__init__(model, use_buffers=True)
        self.half_life_kimg = half_life_kimg
        self.rampup = rampup
        self.requires_grad_(False)
        self._started: bool | None = None  # unknown until the first update (then read once from n_averaged)

    @torch.no_grad()
    def update(self, model: nn.Module, images_seen: int, batch_size: int) -> float:
        decay = ema_decay(images_seen, batch_size, self.half_life_kimg, self.rampup)
        if self._started is None:
            self._started = bool(self.n_averaged.item() > 0)
        averaged = list(self.module.parameters()) + list(self.module.buffers())
        current = [t.detach() for t in list(model.parameters()) + list(model.buffers())]
        if not self._started:  # the first update copies the weights, as AveragedModel does
            for a, c in zip(averaged, current):
                a.copy_(c)
            self._started = True
        else:
            get_ema_multi_avg_fn(decay)(averaged, current, self.n_averaged)
        self.n_averaged += 1
        return decay

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        self._started = None
        return super().load_state_dict(state_dict, strict=strict, assign=assign)
