"""ddpm-flowers: Denoising Diffusion Probabilistic Models (Ho et al. 2020) on Oxford 102 Flowers, in PyTorch.

Modules: config (profiles), data (bundled datasets), diffusion (schedules, loss, samplers), unet (networks),
ema, train (TrainLoop, checkpoints), sample, metrics (FID/KID), viz (figures), cli (python -m ddpm).
"""
__version__ = "0.1.0"
