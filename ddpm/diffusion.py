"""The Gaussian diffusion process of DDPM (Ho et al. 2020), in one module.

Everything that is maths lives here: the noise schedules, the forward process q(x_t | x_0), the training loss, the
posterior q(x_{t-1} | x_t, x_0), the DDPM ancestral sampler (Algorithm 2), the DDIM sampler (Song et al. 2020) and
the few-step DPM-Solver++(2M) (Lu et al. 2022).
The networks know nothing of it: a model is any callable ``model(x_t, t) -> prediction``.

Schedules are computed in float64 (alpha-bar is a long product: float32 loses digits near t = T) and stored as
float32 buffers, so ``diffusion.to(device)`` moves them with the model.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ddpm.progress import progress_bar

SCHEDULES = ("linear", "cosine")
PREDICTIONS = ("eps", "v")
SAMPLERS = ("ddpm", "ddim", "dpmpp2m", "dpmpp3m")  # DPM-Solver++(2M) and (3M): ddpm/solvers.py
NOISE_SAMPLINGS = ("uniform", "lognormal")
# EDM's training distribution and loss weight (Karras et al. 2022, Table 1): ln(sigma) ~ N(P_mean, P_std^2), and
# lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the x0 error.
EDM_P_MEAN, EDM_P_STD, EDM_SIGMA_DATA = -1.2, 1.2, 0.5

Model = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def linear_beta_schedule(timesteps: int) -> torch.Tensor:
    """Ho et al.'s betas, 1e-4 -> 0.02 at T = 1000, rescaled so that other T give the same alpha-bar curve."""
    scale = 1000 / timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)


def cosine_beta_schedule(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal (2021), eq. 17: alpha-bar(t) = cos^2(((t/T + s) / (1 + s)) * pi/2), betas clipped at 0.999."""
    steps = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    alpha_bar = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=max_beta)


def make_betas(schedule: str, timesteps: int, log_snr_shift: float = 0.0) -> torch.Tensor:
    if schedule == "linear":
        betas = linear_beta_schedule(timesteps)
    elif schedule == "cosine":
        betas = cosine_beta_schedule(timesteps)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return shift_log_snr(betas, log_snr_shift) if log_snr_shift else betas


def shift_log_snr(betas: torch.Tensor, shift: float) -> torch.Tensor:
    """The betas whose alpha-bar has log-SNR ln(alpha-bar / (1 - alpha-bar)) + shift at every t (simple diffusion,
    Hoogeboom et al. 2023: shift = -2 ln(d / 64) for images of side d on a schedule made for 64 px; here, on the 32 px
    cosine schedule, -2 ln(64 / 32) for 64 px). alpha-bar = sigmoid(log-SNR), in float64."""
    alpha_bar = torch.cumprod(1 - betas, dim=0)
    shifted = torch.sigmoid(torch.logit(alpha_bar) + shift)
    return 1 - shifted / F.pad(shifted[:-1], (1, 0), value=1.0)


def min_snr_weight(alpha_bar: torch.Tensor, prediction: str, gamma: float | None) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al. 2023): weight the loss at t as if it were an x0 loss capped at SNR = gamma.

    An x0 loss weighted min(SNR, gamma) is an eps loss weighted min(SNR, gamma) / SNR, and a v loss weighted
    min(SNR, gamma) / (SNR + 1). The capped steps are the nearly clean ones, whose easy gradients otherwise dominate.
    """
    if gamma is None:
        return torch.ones_like(alpha_bar)
    snr = alpha_bar / (1 - alpha_bar)
    capped = snr.clamp(max=gamma)
    return capped / snr if prediction == "eps" else capped / (snr + 1)


def lognormal_timestep_probs(alpha_bar: torch.Tensor, p_mean: float = EDM_P_MEAN, p_std: float = EDM_P_STD):
    """EDM's log-normal density of sigma, written over T discrete steps: step t gets the probability mass of the
    ln(sigma) values nearer to its own ln(sigma_t) = ln(sqrt((1 - alpha-bar_t) / alpha-bar_t)) than to its
    neighbours'. Float64, sums to 1."""
    log_sigma = 0.5 * torch.log((1 - alpha_bar) / alpha_bar.clamp(min=1e-300))  # increasing in t
    edges = torch.cat([log_sigma.new_tensor([-math.inf]), (log_sigma[1:] + log_sigma[:-1]) / 2,
                       log_sigma.new_tensor([math.inf])])
    cdf = torch.special.ndtr((edges - p_mean) / p_std)
    return cdf[1:] - cdf[:-1]


def edm_weight(alpha_bar: torch.Tensor, prediction: str, sigma_data: float = EDM_SIGMA_DATA) -> torch.Tensor:
    """EDM's lambda(sigma) on the x0 error, as a weight on this package's eps or v error: x0_hat errs by sigma times
    the eps error (by sqrt(1 - alpha-bar) times the v error), so the weight is lambda times that factor squared.
    For eps it is (sigma^2 + sigma_data^2) / sigma_data^2."""
    sigma2 = (1 - alpha_bar) / alpha_bar
    lam = (sigma2 + sigma_data**2) / (sigma2 * sigma_data**2)
    return lam * (sigma2 if prediction == "eps" else 1 - alpha_bar)


def nearest_increasing(values: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """For each target the index of the nearest of the (monotonic) `values`, nudged so that the indices are strictly
    increasing and in range: exactly len(targets) distinct indices, even where the grid is coarser than the targets."""
    nearest = (values[None, :] - targets[:, None]).abs().argmin(dim=1).tolist()
    indices, low = [], 0
    for i, index in enumerate(nearest):
        index = min(max(index, low), len(values) - len(targets) + i)
        indices.append(index)
        low = index + 1
    return indices


def extract(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t] shaped [B, 1, 1, 1] to broadcast over a batch of images."""
    return values.gather(0, t).reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)


class GaussianDiffusion(nn.Module):
    """Forward process, loss and samplers for T discrete steps; t is an integer index 0..T-1 (paper's t = index + 1)."""

    def __init__(
        self, timesteps: int = 1000, schedule: str = "linear", prediction: str = "eps", min_snr_gamma: float | None = None,
        noise_sampling: str = "uniform", log_snr_shift: float = 0.0,
    ):
        super().__init__()
        if timesteps < 2:
            raise ValueError(f"timesteps must be at least 2, got {timesteps}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if min_snr_gamma is not None and not min_snr_gamma > 0:
            raise ValueError(f"min_snr_gamma must be positive (e.g. 5) or None, got {min_snr_gamma!r}")
        if noise_sampling not in NOISE_SAMPLINGS:
            raise ValueError(f"noise_sampling must be one of {NOISE_SAMPLINGS}, got {noise_sampling!r}")
        if noise_sampling == "lognormal" and min_snr_gamma is not None:
            raise ValueError("noise_sampling='lognormal' brings EDM's own loss weight: set min_snr_gamma to None")
        self.timesteps = timesteps
        self.schedule = schedule
        self.prediction = prediction
        self.min_snr_gamma = min_snr_gamma
        self.noise_sampling = noise_sampling
        self.log_snr_shift = log_snr_shift

        betas = make_betas(schedule, timesteps, log_snr_shift)
        alphas = 1 - betas
        alpha_bar = torch.cumprod(alphas, dim=0)
        alpha_bar_prev = F.pad(alpha_bar[:-1], (1, 0), value=1.0)
        # Posterior q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7): beta-tilde and the two mean coefficients.
        posterior_variance = betas * (1 - alpha_bar_prev) / (1 - alpha_bar)
        buffers = {
            "betas": betas,
            "alpha_bar": alpha_bar,
            "alpha_bar_prev": alpha_bar_prev,
            "sqrt_alpha_bar": alpha_bar.sqrt(),
            "sqrt_one_minus_alpha_bar": (1 - alpha_bar).sqrt(),
            "posterior_variance": posterior_variance,
            # beta-tilde is 0 at t = 0: log-variance takes the t = 1 value there (as improved-diffusion does).
            "posterior_log_variance": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            "posterior_mean_coef_x0": betas * alpha_bar_prev.sqrt() / (1 - alpha_bar),
            "posterior_mean_coef_xt": (1 - alpha_bar_prev) * alphas.sqrt() / (1 - alpha_bar),
            "loss_weight": (edm_weight(alpha_bar, prediction) if noise_sampling == "lognormal"
                            else min_snr_weight(alpha_bar, prediction, min_snr_gamma)),
            "timestep_probs": (lognormal_timestep_probs(alpha_bar) if noise_sampling == "lognormal"
                               else torch.full_like(alpha_bar, 1 / timesteps)),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value.float(), persistent=False)
        # DDIM's per-step scalars (1 - a_t / a_prev) cancel badly in float32: they use this float64 copy, kept on
        # the CPU (not a buffer) so that reading them never waits for the GPU.
        self.alpha_bar_f64 = alpha_bar
        self.half_log_snr_f64 = 0.5 * torch.log(alpha_bar / (1 - alpha_bar))  # DPM-Solver's lambda_t

    # ----------------------------------------------------------------------------------------------------------------
    # Forward process and training (Algorithm 1)
    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(alpha-bar_t) x_0, (1 - alpha-bar_t) I) in one step."""
        if noise is None:
            noise = torch.randn_like(x0)
        return extract(self.sqrt_alpha_bar, t, x0) * x0 + extract(self.sqrt_one_minus_alpha_bar, t, x0) * noise

    def training_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        if self.prediction == "eps":
            return noise
        # v = sqrt(a) eps - sqrt(1 - a) x0 (Salimans & Ho 2022): the same loss scale at every t.
        return extract(self.sqrt_alpha_bar, t, x0) * noise - extract(self.sqrt_one_minus_alpha_bar, t, x0) * x0

    def sample_timesteps(self, batch: int, *, device, generator: torch.Generator | None = None) -> torch.Tensor:
        """t for a training batch: uniform (Ho et al.), or from timestep_probs (EDM's log-normal sigma)."""
        if self.noise_sampling == "uniform":
            return torch.randint(0, self.timesteps, (batch,), device=device, generator=generator)
        return torch.multinomial(self.timestep_probs.to(device), batch, replacement=True, generator=generator)

    def training_loss(
        self,
        model: Model,
        x0: torch.Tensor,
        *,
        t: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Algorithm 1: pick t and noise, noise x0 to x_t, regress the network's prediction onto the target (MSE).
        labels: class indices for a conditional network (None: the network is called as model(x_t, t))."""
        if t is None:
            t = self.sample_timesteps(x0.shape[0], device=x0.device, generator=generator)
        if noise is None:
            noise = torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
        x_t = self.q_sample(x0, t, noise)
        prediction = model(x_t, t) if labels is None else model(x_t, t, labels)
        target = self.training_target(x0, t, noise).float()
        if self.min_snr_gamma is None and self.noise_sampling == "uniform":
            return F.mse_loss(prediction.float(), target)
        per_image = F.mse_loss(prediction.float(), target, reduction="none").flatten(1).mean(1)
        return (self.loss_weight.gather(0, t) * per_image).mean()

    # ----------------------------------------------------------------------------------------------------------------
    # From a network output to x0 and eps
    def predict_x0_eps(self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, clip: bool):
        """Turn the network's output into (x0_hat, eps_hat); x0 clipped to [-1, 1] if asked, eps made consistent."""
        model_output = model_output.to(x_t.dtype)
        a = extract(self.sqrt_alpha_bar, t, x_t)
        s = extract(self.sqrt_one_minus_alpha_bar, t, x_t)
        if self.prediction == "eps":
            x0 = (x_t - s * model_output) / a
        else:
            x0 = a * x_t - s * model_output
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (x_t - a * x0) / s
        return x0, eps

    def q_posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor):
        """Mean, variance and log-variance of q(x_{t-1} | x_t, x_0) (Ho et al. eq. 6-7)."""
        mean = extract(self.posterior_mean_coef_x0, t, x_t) * x0 + extract(self.posterior_mean_coef_xt, t, x_t) * x_t
        return mean, extract(self.posterior_variance, t, x_t), extract(self.posterior_log_variance, t, x_t)

    # ----------------------------------------------------------------------------------------------------------------
    # Samplers
    @torch.no_grad()
    def p_sample(self, model: Model, x_t: torch.Tensor, t: int, *, clip: bool = True, generator=None,
                 return_x0: bool = False):
        """One step of Algorithm 2: x_{t-1} = posterior mean(x0_hat, x_t) + sqrt(beta-tilde_t) z, no noise at t = 0.

        Without clipping the posterior mean equals Algorithm 2's 1/sqrt(alpha_t) (x_t - beta_t / sqrt(1 - alpha-bar_t)
        eps); going through x0_hat lets us clip it to the data range, which removes the saturated colours.
        With return_x0, returns (x_{t-1}, x0_hat): the trajectory shows the prediction at no extra network call.
        """
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, _ = self.predict_x0_eps(model(x_t, t_batch), x_t, t_batch, clip)
        mean, _, log_variance = self.q_posterior(x0, x_t, t_batch)
        x_prev = mean
        if t > 0:
            noise = torch.randn(x_t.shape, device=x_t.device, dtype=x_t.dtype, generator=generator)
            x_prev = mean + (0.5 * log_variance).exp() * noise
        return (x_prev, x0) if return_x0 else x_prev

    def ddim_timesteps(self, steps: int) -> list[int]:
        """`steps` indices spread evenly over 0..T-1, always including both ends."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"DDIM steps must be between 1 and T={self.timesteps}, got {steps}")
        from ddpm.solvers import step_grid

        return step_grid(self, steps, "time")[::-1]

    def solver_timesteps(self, steps: int) -> list[int]:
        """`steps` indices evenly spaced in log-SNR (lambda) from t = T-1 down to 0, the spacing Lu et al. advise for
        low-resolution images: the uniform grid leaves too few steps at small t, where a 32 px image gets its detail."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"solver steps must be between 1 and T={self.timesteps}, got {steps}")
        from ddpm.solvers import step_grid

        return step_grid(self, steps, "lambda")[::-1]  # exactly `steps` distinct indices on the discrete grid

    def ddim_sigma(self, t: int, t_prev: int, eta: float) -> torch.Tensor:
        """Song et al. eq. 16: eta = 1 gives the DDPM posterior variance beta-tilde when t_prev = t - 1."""
        a = self.alpha_bar_f64[t]
        a_prev = self.alpha_bar_f64[t_prev] if t_prev >= 0 else torch.ones_like(a)
        return eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)).sqrt()

    @torch.no_grad()
    def ddim_step(self, model: Model, x_t, t: int, t_prev: int, *, eta: float = 0.0, clip: bool = True, generator=None,
                  return_x0: bool = False):
        """x_{t_prev} = sqrt(a_prev) x0_hat + sqrt(1 - a_prev - sigma^2) eps_hat + sigma z (Song et al. eq. 12).
        With return_x0, returns (x_{t_prev}, x0_hat)."""
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        x0, eps = self.predict_x0_eps(model(x_t, t_batch), x_t, t_batch, clip)
        a_prev = self.alpha_bar_f64[t_prev] if t_prev >= 0 else torch.ones((), dtype=torch.float64)
        sigma = self.ddim_sigma(t, t_prev, eta)
        x0_coef, eps_coef = a_prev.sqrt().item(), (1 - a_prev - sigma**2).clamp(min=0).sqrt().item()
        sigma = sigma.item()
        x_prev = x0_coef * x0 + eps_coef * eps
        if eta > 0 and t_prev >= 0:
            x_prev = x_prev + sigma * torch.randn(x_t.shape, device=x_t.device, dtype=x_t.dtype, generator=generator)
        return (x_prev, x0) if return_x0 else x_prev

    @torch.no_grad()
    def sample(
        self,
        model: Model,
        shape: Sequence[int],
        *,
        sampler: str = "ddpm",
        steps: int | None = None,
        eta: float = 0.0,
        clip: bool = True,
        noise: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        return_trajectory: bool = False,
        trajectory_frames: int = 50,
        progress: bool = False,
        grid: str | None = None,
        lambda_min: float | None = None,
    ):
        """Generate images in [-1, 1] from pure noise.

        sampler="ddpm": ancestral sampling over all T steps (Algorithm 2). sampler="ddim": `steps` steps (default T)
        with stochasticity `eta` (0 = deterministic given the starting noise). sampler="dpmpp2m" / "dpmpp3m":
        DPM-Solver++(2M) / (3M), deterministic (ddpm/solvers.py). `grid` places the steps (solvers.GRIDS; default
        "time" for DDIM, "lambda" for the solvers), from the noisiest index whose log-SNR is at least `lambda_min`
        (default: from T-1); the starting noise stands for x_t there.

        With return_trajectory, also returns min(trajectory_frames, steps + 1) frames [(t, x_t, x0_hat), ...] on the
        CPU, t counted as in the paper (T for the starting noise, 0 for the result): x_t entering a sampler step and
        the network's prediction x0_hat at that step, at steps evenly spaced in log-SNR (see trajectory_steps), then
        (0, x_0, x_0) last. The first frame is (T, x_T, x0_hat predicted from x_T).
        """
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
        if return_trajectory and trajectory_frames < 2:
            raise ValueError(f"trajectory_frames must be at least 2 (x_T and x_0), got {trajectory_frames}")
        device = torch.device(device) if device is not None else self.betas.device
        if noise is None:
            noise = torch.randn(tuple(shape), device=device, generator=generator)
        x = noise.to(device)
        if sampler == "ddpm":
            if steps not in (None, self.timesteps):
                raise ValueError(f"the DDPM sampler runs all T={self.timesteps} steps; use sampler='ddim' for {steps}")
            schedule = list(range(self.timesteps - 1, -1, -1))
            pairs = [(t, t - 1) for t in schedule]
        else:
            from ddpm.solvers import step_grid

            grid = grid or ("time" if sampler == "ddim" else "lambda")
            schedule = step_grid(self, steps or self.timesteps, grid, lambda_min=lambda_min)
            pairs = list(zip(schedule, schedule[1:] + [-1]))
        if sampler == "ddpm" and (grid is not None or lambda_min is not None):
            raise ValueError("the DDPM sampler walks every step: grid and lambda_min are for ddim and the solvers")

        keep = set()
        if return_trajectory:
            keep = set(self.trajectory_steps([t for t, _ in pairs], trajectory_frames))
        trajectory = []
        history = ()  # DPM-Solver++'s x0_hat of the previous steps
        for i, (t, t_prev) in enumerate(progress_bar(pairs, desc=f"{sampler} sampling", disable=not progress)):
            if sampler == "ddpm":
                x_prev, x0 = self.p_sample(model, x, t, clip=clip, generator=generator, return_x0=True)
            elif sampler == "ddim":
                x_prev, x0 = self.ddim_step(model, x, t, t_prev, eta=eta, clip=clip, generator=generator, return_x0=True)
            else:
                from ddpm.solvers import ORDERS, dpmpp_step

                order = min(ORDERS[sampler], len(pairs) - i)  # lower orders at the last steps (Lu et al.'s code)
                x_prev, x0, history = dpmpp_step(self, model, x, t, t_prev, order=order, clip=clip, history=history)
            if i in keep:  # index t is the paper's t + 1
                trajectory.append((t + 1, x.detach().cpu(), x0.detach().cpu()))
            x = x_prev
        x = x.clamp(-1, 1)
        if not return_trajectory:
            return x
        # x_0 stands for the last step (t = 0: it differs from x_1 by the last 1% of noise) and is its own x0_hat
        return x, trajectory + [(0, x.detach().cpu(), x.detach().cpu())]

    def trajectory_steps(self, timesteps: Sequence[int], frames: int) -> list[int]:
        """Which of a sampler's steps (their indices t, from T-1 down) a trajectory of `frames` frames shows.

        Evenly spaced in t, three quarters of the frames of the linear schedule would be noise. Instead: the frames - 1
        steps whose log-SNR is nearest to `frames` values evenly spaced from the first step's to the last's, the
        last value being left to the final x_0. Always the first step (x_T), distinct, all of them if too few.
        """
        if frames - 1 >= len(timesteps):
            return list(range(len(timesteps)))
        lam = self.half_log_snr_f64[list(timesteps)]  # increasing along the sampler's steps
        targets = torch.linspace(lam[0].item(), lam[-1].item(), frames, dtype=torch.float64)[:-1]
        return nearest_increasing(lam, targets)
