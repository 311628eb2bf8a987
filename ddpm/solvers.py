"""Step grids and multistep solvers of the probability-flow ODE (issue 31), apart from the diffusion maths.

A deterministic sampler walks a decreasing list of time indices (its grid), calling the network once at each (twice
under guidance), and the last call, at t = 0, gives x0_hat itself. Where the indices fall matters as much as the
solver's order. Every grid here lies on the discrete schedule and holds exactly `steps` distinct indices, from its
noisiest index down to 0:

- "lambda": evenly spaced in log-SNR, lambda = log(alpha / sigma) (Lu et al. 2022). With `lambda_min` it starts at
  the noisiest index whose lambda is at least that: the clipped cosine schedule reaches lambda = -9.9 at T-1, and
  steps below about -4 (SNR under 3e-4) see pure noise, so Lu et al.'s own code ends that schedule early.
- "time": evenly spaced in t (DDIM's grid).
- "edm": Karras et al. 2022's spacing in sigma = sqrt((1 - alpha-bar) / alpha-bar) = e^-lambda, with rho = 7: dense
  near the data.

Solvers, all in data prediction (x0_hat) with h = lambda_prev - lambda_t: DPM-Solver++ multistep of order 1 (DDIM with
eta = 0), 2 (2M) and 3 (3M), each reusing the x0_hat of the steps before instead of calling the network again.
"""
from __future__ import annotations

import argparse
import contextlib
import math

import torch
from torch import nn

from ddpm.diffusion import nearest_increasing

GRIDS = ("lambda", "time", "edm")
ORDERS = {"dpmpp2m": 2, "dpmpp3m": 3}  # solver name -> order of the multistep update
EDM_RHO = 7.0


def top_index(diffusion, lambda_min: float | None) -> int:
    """The noisiest index a grid starts from: T-1, or the last t whose lambda is at least lambda_min."""
    lam = diffusion.half_log_snr_f64  # decreasing in t
    if lambda_min is None:
        return diffusion.timesteps - 1
    above = (lam >= lambda_min).nonzero()
    if len(above) == 0:
        raise ValueError(f"lambda_min={lambda_min:g} is above the schedule's cleanest lambda ({lam[0].item():.2f})")
    return int(above.max())


def step_grid(diffusion, steps: int, grid: str = "lambda", *, lambda_min: float | None = None,
              rho: float = EDM_RHO) -> list[int]:
    """`steps` distinct indices t, decreasing from the grid's noisiest index to 0 (see the module's docstring)."""
    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    top = top_index(diffusion, lambda_min)
    if not 1 <= steps <= top + 1:
        raise ValueError(f"steps must be between 1 and {top + 1} (the indices from t = {top} down to 0), got {steps}")
    if steps == 1:
        return [top]
    if grid == "time":
        return sorted({round(i * top / (steps - 1)) for i in range(steps)}, reverse=True)
    lam = diffusion.half_log_snr_f64[: top + 1]  # decreasing in t
    if grid == "lambda":
        targets = torch.linspace(lam[0].item(), lam[-1].item(), steps, dtype=torch.float64)
    else:  # edm: sigma from sigma_min up to sigma_max, evenly spaced in sigma^(1/rho)
        ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
        low, high = math.exp(-lam[0].item() / rho), math.exp(-lam[-1].item() / rho)
        targets = -rho * torch.log(low + ramp * (high - low))  # lambda = -log(sigma)
    return nearest_increasing(lam, targets)[::-1]  # the nearest distinct indices, noisiest first


def sigma_interval(diffusion, sigma_low: float, sigma_high: float) -> tuple[int, int]:
    """(t_low, t_high): the indices whose EDM sigma lies in (sigma_low, sigma_high], Kynkaanniemi et al. 2024's guidance
    interval (0.28, 5.42] for EDM2, as indices for guidance.guided(interval=)."""
    if not 0 <= sigma_low < sigma_high:
        raise ValueError(f"guidance interval: need 0 <= low < high in sigma, got ({sigma_low:g}, {sigma_high:g})")
    sigma = torch.exp(-diffusion.half_log_snr_f64)  # increasing in t
    inside = ((sigma > sigma_low) & (sigma <= sigma_high)).nonzero()
    if len(inside) == 0:
        raise ValueError(f"guidance interval ({sigma_low:g}, {sigma_high:g}] holds no step of the schedule (sigma "
                         f"{sigma[0].item():.3g} to {sigma[-1].item():.3g})")
    return int(inside.min()), int(inside.max())


@torch.no_grad()
def dpmpp_step(diffusion, model, x_t: torch.Tensor, t: int, t_prev: int, *, order: int = 2, clip: bool = True,
               history: tuple = ()):
    """One step of DPM-Solver++ multistep (Lu et al. 2022, Algorithm 2 and their code's third-order update) on the
    probability-flow ODE, in data prediction. With m0 the x0_hat at t, m1 and m2 those of the steps before, and the
    lambda gaps h (this step), h0 and h1 (the steps before), r0 = h0 / h, r1 = h1 / h:

        x_prev = (sigma_prev / sigma_t) x_t - alpha_prev phi1 m0                      order 1 (DDIM)
                 - alpha_prev phi1 D1_0 / 2                                           order 2 (2M)
        or       + alpha_prev (phi2 D1 - phi3 D2)                                     order 3 (3M)

    with phi1 = e^-h - 1, phi2 = phi1 / h + 1, phi3 = phi2 / h - 1/2, D1_0 = (m0 - m1) / r0, D1_1 = (m1 - m2) / r1,
    D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1) and D2 = (D1_0 - D1_1) / (r0 + r1). The first steps use the orders their
    history allows; the last (to t = -1, sigma = 0) returns x0_hat itself. Returns (x_prev, x0_hat, history), and
    `history` (the newest x0_hat and lambda first) goes in again next step."""
    t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    m0, _ = diffusion.predict_x0_eps(model(x_t, t_batch), x_t, t_batch, clip)
    lam = diffusion.half_log_snr_f64
    history = ((m0, lam[t].item()),) + tuple(history)[: order - 1]
    if t_prev < 0:
        return m0, m0, history
    a, a_prev = diffusion.alpha_bar_f64[t], diffusion.alpha_bar_f64[t_prev]
    h = lam[t_prev].item() - lam[t].item()
    alpha_prev, phi1 = a_prev.sqrt().item(), math.expm1(-h)
    x_prev = ((1 - a_prev) / (1 - a)).sqrt().item() * x_t - alpha_prev * phi1 * m0
    if len(history) >= 2:
        (m1, lam1) = history[1]
        r0 = (lam[t].item() - lam1) / h
        d1_0 = (m0 - m1) / r0
        if len(history) == 2:
            return x_prev - 0.5 * alpha_prev * phi1 * d1_0, m0, history
        (m2, lam2) = history[2]
        r1 = (lam1 - lam2) / h
        d1_1 = (m1 - m2) / r1
        d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
        d2 = (d1_0 - d1_1) / (r0 + r1)
        phi2 = phi1 / h + 1
        phi3 = phi2 / h - 0.5
        x_prev = x_prev + alpha_prev * (phi2 * d1 - phi3 * d2)
    return x_prev, m0, history


@contextlib.contextmanager
def counted_calls(model: nn.Module):
    """Counts the images that go through `model`'s forward inside the block: {"images": n}. A guided step sends the
    batch twice (both halves), so n / batch is the network calls an image, as they are paid."""
    count = {"images": 0}

    def hook(module, args):
        count["images"] += args[0].shape[0]

    handle = model.register_forward_pre_hook(hook)
    try:
        yield count
    finally:
        handle.remove()


def calls_per_image(timesteps, guidance_scale: float | None, interval: tuple[int, int] | None = None) -> int:
    """Network calls an image for a sampler that visits `timesteps` (one call each): 2 at a guided step (scale other
    than None, 0 and 1) inside the guidance interval (all steps without one), else 1."""
    if guidance_scale is None or guidance_scale in (0, 1):
        return len(timesteps)
    low, high = interval if interval is not None else (-1, math.inf)
    return sum(2 if low <= t <= high else 1 for t in timesteps)


def add_solver_flags(p: argparse.ArgumentParser) -> None:
    """Where the sampler's steps fall and where guidance applies (ddpm/solvers.py)."""
    p.add_argument("--grid", choices=GRIDS, default=None,
                   help="step placement: lambda (even in log-SNR), time (even in t) or edm (rho = 7 in sigma); "
                        "default time for ddim, lambda for dpmpp2m/dpmpp3m")
    p.add_argument("--lambda-min", type=float, default=None,
                   help="start the steps at the noisiest t whose log-SNR lambda is at least this (default: at T-1)")
    p.add_argument("--guidance-interval", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                   help="guide only the steps whose sigma lies in (LOW, HIGH]; the others call the network once")


def solver_options(args: argparse.Namespace) -> dict:
    return dict(grid=args.grid, lambda_min=args.lambda_min,
                guidance_interval=tuple(args.guidance_interval) if args.guidance_interval else None)
