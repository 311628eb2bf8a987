"""The two denoising networks of the narrative: a plain baseline UNet and the improved UNet.

Both map (x_t, t) -> a tensor of x_t's shape (the predicted noise, or v). Neither knows anything about the diffusion
process beyond the integer time step t.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def check_image_size(image_size: int, channel_mult: Sequence[int]) -> None:
    """A UNet with L levels halves the image L-1 times: the size must divide by 2**(L-1) with something left."""
    halvings = len(channel_mult) - 1
    if image_size < 2**halvings or image_size % 2**halvings:
        raise ValueError(
            f"image_size={image_size} cannot be halved {halvings} times (channel_mult={tuple(channel_mult)} has "
            f"{len(channel_mult)} levels): use a multiple of {2**halvings}, or fewer levels"
        )


# ----------------------------------------------------------------------------------------------------------------------
# Baseline: the honest starting point. Conv + ReLU, one block per level, skips by concatenation, and the time step
# added as a learned per-channel bias of t/T. No normalisation, no attention, no embedding of t beyond a scalar.
class BaselineBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.time_bias = nn.Linear(1, out_channels)

    def forward(self, x: torch.Tensor, t01: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = h + self.time_bias(t01)[:, :, None, None]
        return F.relu(self.conv2(h))


class BaselineUNet(nn.Module):
    def __init__(
        self,
        image_size: int = 64,
        base_channels: int = 64,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        timesteps: int = 1000,
        in_channels: int = 3,
    ):
        super().__init__()
        check_image_size(image_size, channel_mult)
        self.image_size = image_size
        self.timesteps = timesteps
        widths = [base_channels * m for m in channel_mult]
        self.down = nn.ModuleList()
        channels = in_channels
        for width in widths:
            self.down.append(BaselineBlock(channels, width))
            channels = width
        self.middle = BaselineBlock(channels, channels)
        self.up = nn.ModuleList()
        for width in reversed(widths):
            self.up.append(BaselineBlock(channels + width, width))
            channels = width
        self.out = nn.Conv2d(channels, in_channels, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t01 = (t.float() / self.timesteps)[:, None].to(x.dtype)
        skips = []
        for i, block in enumerate(self.down):
            x = block(x, t01)
            skips.append(x)
            if i < len(self.down) - 1:
                x = F.max_pool2d(x, 2)
        x = self.middle(x, t01)
        for i, block in enumerate(self.up):
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skips.pop()], dim=1), t01)
        return self.out(x)


# ----------------------------------------------------------------------------------------------------------------------
# Improved UNet (Ho et al. 2020 / Nichol & Dhariwal 2021): residual blocks, GroupNorm, sinusoidal time embedding + MLP,
# per-block time conditioning, self-attention at low resolutions, dropout, zero-initialised output layers.
def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sinusoidal features of the (integer) time step: [cos(t w_i), sin(t w_i)], w_i geometric."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(embedding, (0, dim % 2))


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels (32 groups at 128 channels, 8 at 32)."""
    return nn.GroupNorm(math.gcd(32, max(1, channels // 4)), channels)


def zero_init(module: nn.Module) -> nn.Module:
    """Start a residual branch (or the output) at zero, so every block begins as the identity."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice with a skip, conditioned on the time embedding in one of two ways:

    - additive (Ho et al.): the projected embedding is added to the features as a per-channel bias;
    - scale-shift (AdaGN, Dhariwal & Nichol 2021 Table 3): it sets a per-channel scale and shift of the second norm,
      ``norm(h) * (1 + scale) + shift``, so t can also turn features up or down.

    The projection starts with a SiLU (as in Ho et al. and improved-diffusion): without it the time MLP's last Linear
    and this one would collapse into a single linear map.
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float, scale_shift: bool = False):
        super().__init__()
        self.scale_shift = scale_shift
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, (2 if scale_shift else 1) * out_channels))
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        t = self.time_proj(time_emb)[:, :, None, None].to(h.dtype)
        if self.scale_shift:
            scale, shift = t.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + t)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map (PyTorch's fused scaled_dot_product_attention)."""

    def __init__(self, channels: int, head_channels: int = 64):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        # [B, heads, pixels, head_channels], contiguous: the fused kernels refuse strided inputs and fall back to the
        # slow math path (on CPU without channels_last).
        q, k, v = (y.transpose(-1, -2).contiguous() for y in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The blocks at one resolution: residual blocks, each optionally followed by attention."""

    def __init__(self, channels_in: Sequence[int], out_channels: int, time_dim: int, dropout: float, attention: bool,
                 scale_shift: bool = False):
        super().__init__()
        self.res = nn.ModuleList(ResBlock(c, out_channels, time_dim, dropout, scale_shift) for c in channels_in)
        self.attn = nn.ModuleList(SelfAttention(out_channels) if attention else nn.Identity() for _ in channels_in)


class UNet(nn.Module):
    def __init__(
        self,
        image_size: int = 64,
        base_channels: int = 128,
        channel_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        in_channels: int = 3,
        scale_shift_norm: bool = False,
        num_classes: int = 0,
        mid_attention: bool = True,
        cond_channels: int = 0,
    ):
        super().__init__()
        check_image_size(image_size, channel_mult)
        resolutions = [image_size // 2**i for i in range(len(channel_mult))]
        unused = sorted(set(attention_resolutions) - set(resolutions))
        if unused:
            raise ValueError(
                f"attention_resolutions {unused} never occur: at image_size={image_size} with "
                f"channel_mult={tuple(channel_mult)} the UNet works at {resolutions}"
            )
        self.image_size = image_size
        time_dim = 4 * base_channels
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim)
        )
        self.base_channels = base_channels
        # Class conditioning: one embedding per label plus the null label (index num_classes), added to the time
        # embedding so that every block sees it where it sees t (as improved-diffusion's label_emb).
        self.num_classes = num_classes
        self.label_emb = nn.Embedding(num_classes + 1, time_dim) if num_classes else None
        # A super-resolution stage (ddpm/cascade.py): cond_channels more input channels (the upsampled low-resolution
        # image), and the augmentation level it was noised to, embedded like t and added to the time embedding
        self.cond_channels = cond_channels
        self.aug_mlp = (nn.Sequential(nn.Linear(base_channels, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))
                        if cond_channels else None)
        self.stem = nn.Conv2d(in_channels + cond_channels, base_channels, 3, padding=1)

        # Encoder: remember the channel count of every tensor pushed on the skip stack.
        skip_channels = [base_channels]
        channels = base_channels
        self.down_levels = nn.ModuleList()
        self.downsamplers = nn.ModuleList()
        for level, mult in enumerate(channel_mult):
            width = base_channels * mult
            inputs = [channels] + [width] * (num_res_blocks - 1)
            self.down_levels.append(Level(inputs, width, time_dim, dropout, resolutions[level] in attention_resolutions,
                                         scale_shift_norm))
            channels = width
            skip_channels += [width] * num_res_blocks
            if level < len(channel_mult) - 1:
                self.downsamplers.append(Downsample(channels))
                skip_channels.append(channels)

        self.mid_res1 = ResBlock(channels, channels, time_dim, dropout, scale_shift_norm)
        self.mid_attn = SelfAttention(channels) if mid_attention else nn.Identity()
        self.mid_res2 = ResBlock(channels, channels, time_dim, dropout, scale_shift_norm)

        # Decoder: one more block per level than the encoder, each eating one skip.
        self.up_levels = nn.ModuleList()
        self.upsamplers = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            width = base_channels * mult
            inputs = []
            for _ in range(num_res_blocks + 1):
                inputs.append(channels + skip_channels.pop())
                channels = width
            self.up_levels.append(Level(inputs, width, time_dim, dropout, resolutions[level] in attention_resolutions,
                                         scale_shift_norm))
            if level > 0:
                self.upsamplers.append(Upsample(channels))

        self.out_norm = group_norm(channels)
        self.out_conv = zero_init(nn.Conv2d(channels, in_channels, 3, padding=1))

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None,
                cond: torch.Tensor | None = None, cond_t: torch.Tensor | None = None) -> torch.Tensor:
        """labels: class indices [B] of a conditional network, num_classes for the null label (None: all null).
        cond, cond_t: a super-resolution stage's upsampled, noised low-resolution image [B, cond_channels, H, W] and
        the integer augmentation level [B] it was noised to."""
        time_emb = self.time_mlp(timestep_embedding(t, self.base_channels).to(x.dtype))
        if self.cond_channels:
            if cond is None or cond_t is None:
                raise ValueError("this UNet is a super-resolution stage: give cond (the upsampled low-resolution "
                                 "image) and cond_t (its augmentation level)")
            time_emb = time_emb + self.aug_mlp(timestep_embedding(cond_t, self.base_channels).to(x.dtype))
            x = torch.cat([x, cond.to(x.dtype)], dim=1)
        elif cond is not None:
            raise ValueError("cond given to a UNet that is not a super-resolution stage (cond_channels=0)")
        if self.label_emb is not None:
            if labels is None:
                labels = torch.full_like(t, self.num_classes, dtype=torch.long)
            time_emb = time_emb + self.label_emb(labels).to(time_emb.dtype)
        elif labels is not None:
            raise ValueError("labels given to an unconditional UNet (num_classes=0)")
        h = self.stem(x)
        skips = [h]
        for i, level in enumerate(self.down_levels):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(h, time_emb))
                skips.append(h)
            if i < len(self.downsamplers):
                h = self.downsamplers[i](h)
                skips.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, time_emb)), time_emb)
        for i, level in enumerate(self.up_levels):
            for res, attn in zip(level.res, level.attn):
                h = attn(res(torch.cat([h, skips.pop()], dim=1), time_emb))
            if i < len(self.upsamplers):
                h = self.upsamplers[i](h)
        return self.out_conv(F.silu(self.out_norm(h)))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
