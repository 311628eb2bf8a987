"""The diffusion maths against closed forms: schedules, q(x_t | x_0), the posterior, DDPM and DDIM steps."""
import math

import pytest
import torch

from ddpm.diffusion import GaussianDiffusion, cosine_beta_schedule, linear_beta_schedule


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("timesteps", [1000, 100])
def test_alpha_bar_decreases_from_one_to_near_zero(schedule, timesteps):
    d = GaussianDiffusion(timesteps, schedule)
    alpha_bar = d.alpha_bar.double()
    assert torch.all(alpha_bar[1:] < alpha_bar[:-1])
    assert 0.99 < alpha_bar[0] < 1
    assert alpha_bar[-1] < 1e-3


def test_schedules_are_float64_and_match_their_definitions():
    betas = linear_beta_schedule(1000)
    assert betas.dtype == torch.float64
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    # rescaled for other T: the same total noise, so alpha-bar_T stays close
    assert torch.prod(1 - linear_beta_schedule(250)).item() == pytest.approx(torch.prod(1 - betas).item(), rel=0.5)
    T, s = 1000, 0.008
    alpha_bar = torch.cumprod(1 - cosine_beta_schedule(T), 0)
    t = torch.tensor([1, 250, 500, 750], dtype=torch.float64)
    f = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    assert torch.allclose(alpha_bar[t.long() - 1], f(t) / f(torch.zeros(1, dtype=torch.float64)), rtol=1e-6)


def test_unknown_schedule_and_prediction_are_refused():
    with pytest.raises(ValueError, match="schedule must be one of"):
        GaussianDiffusion(10, "quadratic")
    with pytest.raises(ValueError, match="prediction must be one of"):
        GaussianDiffusion(10, prediction="x0")


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_mean_and_variance_match_closed_form(schedule):
    d = GaussianDiffusion(1000, schedule)
    n = 200_000
    x0 = torch.tensor([-0.8, 0.1, 0.9]).reshape(1, 3, 1, 1).expand(n, 3, 1, 1)
    torch.manual_seed(0)
    for t_index in [0, 100, 500, 999]:
        t = torch.full((n,), t_index)
        x_t = d.q_sample(x0, t).double()
        a = d.alpha_bar[t_index].double()
        mean, var = x_t.mean(0).flatten(), x_t.var(0).flatten()
        tolerance_mean = 5 * math.sqrt((1 - a) / n)
        assert torch.allclose(mean, a.sqrt() * x0[0].flatten().double(), atol=tolerance_mean)
        assert torch.allclose(var, (1 - a).expand(3), rtol=0.02)


def test_posterior_matches_ho_eq_6_7_and_gaussian_conditioning():
    d = GaussianDiffusion(1000, "linear")
    torch.manual_seed(1)
    x0, x_t = torch.randn(6, 3, 4, 4), torch.randn(6, 3, 4, 4)
    t = torch.tensor([1, 5, 50, 300, 700, 999])
    mean, var, log_var = d.q_posterior(x0, x_t, t)
    betas = linear_beta_schedule(1000)
    alpha_bar = torch.cumprod(1 - betas, 0)
    for i, ti in enumerate(t.tolist()):
        beta, a, a_prev = betas[ti], alpha_bar[ti], alpha_bar[ti - 1]
        # eq. 7, written out
        mu = a_prev.sqrt() * beta / (1 - a) * x0[i].double() + (1 - beta).sqrt() * (1 - a_prev) / (1 - a) * x_t[i].double()
        beta_tilde = (1 - a_prev) / (1 - a) * beta
        assert torch.allclose(mean[i].double(), mu, atol=1e-5)
        assert var[i].flatten()[0].item() == pytest.approx(beta_tilde.item(), rel=1e-5)
        assert log_var[i].flatten()[0].item() == pytest.approx(math.log(beta_tilde.item()), rel=1e-5)
        # the same from conditioning the joint Gaussian of (x_{t-1}, x_t) given x0
        cov = (1 - beta).sqrt() * (1 - a_prev)
        cond_var = (1 - a_prev) - cov**2 / (1 - a)
        cond_mean = a_prev.sqrt() * x0[i].double() + cov / (1 - a) * (x_t[i].double() - a.sqrt() * x0[i].double())
        assert torch.allclose(mean[i].double(), cond_mean, atol=1e-5)
        assert cond_var.item() == pytest.approx(beta_tilde.item(), rel=1e-6)


class ConstantEps(torch.nn.Module):
    """A 'network' whose noise prediction is a fixed function of x_t and t."""

    def forward(self, x, t):
        return 0.5 * x + 0.001 * t.float().reshape(-1, 1, 1, 1)


def test_ddpm_step_without_clipping_is_algorithm_2():
    d = GaussianDiffusion(1000, "linear")
    x_t = torch.randn(4, 3, 8, 8)
    t = 500
    out = d.p_sample(ConstantEps(), x_t, t, clip=False, generator=torch.Generator().manual_seed(3))
    z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(3))
    eps = ConstantEps()(x_t, torch.full((4,), t))
    beta, alpha, a = d.betas[t], 1 - d.betas[t], d.alpha_bar[t]
    expected = (x_t - beta / (1 - a).sqrt() * eps) / alpha.sqrt() + d.posterior_variance[t].sqrt() * z
    assert torch.allclose(out, expected, atol=1e-5)


def test_ddim_with_eta_one_over_all_steps_has_the_ddpm_posterior_variance():
    d = GaussianDiffusion(1000, "cosine")
    sigma2 = torch.stack([d.ddim_sigma(t, t - 1, 1.0) ** 2 for t in range(1, 1000)])
    assert torch.allclose(sigma2.float(), d.posterior_variance[1:], rtol=1e-5)
    # and a whole step equals a DDPM step given the same noise
    x_t = torch.randn(2, 3, 8, 8)
    for t in (1, 400, 999):
        ddim = d.ddim_step(ConstantEps(), x_t, t, t - 1, eta=1.0, generator=torch.Generator().manual_seed(5))
        ddpm = d.p_sample(ConstantEps(), x_t, t, generator=torch.Generator().manual_seed(5))
        assert torch.allclose(ddim, ddpm, atol=1e-4)


def test_ddim_eta_zero_is_deterministic_given_the_noise():
    d = GaussianDiffusion(100, "linear")
    noise = torch.randn(3, 3, 8, 8)
    a = d.sample(ConstantEps(), noise.shape, sampler="ddim", steps=20, noise=noise, generator=torch.Generator().manual_seed(0))
    b = d.sample(ConstantEps(), noise.shape, sampler="ddim", steps=20, noise=noise, generator=torch.Generator().manual_seed(9))
    assert torch.equal(a, b)
    c = d.sample(ConstantEps(), noise.shape, sampler="ddim", steps=20, eta=1.0, noise=noise, generator=torch.Generator().manual_seed(9))
    assert not torch.equal(a, c)


def test_ddim_timesteps_cover_both_ends():
    d = GaussianDiffusion(1000)
    for steps in (1, 2, 50, 100, 1000):
        seq = d.ddim_timesteps(steps)
        assert seq[-1] == 999 and len(seq) == steps and (steps == 1 or seq[0] == 0)
    with pytest.raises(ValueError, match="DDIM steps must be between 1 and T=1000"):
        d.ddim_timesteps(0)


def test_samplers_return_images_in_range_and_a_trajectory():
    d = GaussianDiffusion(50)
    x, trajectory = d.sample(ConstantEps(), (2, 3, 8, 8), sampler="ddpm", return_trajectory=True, trajectory_frames=10)
    assert x.shape == (2, 3, 8, 8) and x.min() >= -1 and x.max() <= 1
    assert [t for t, _, _ in trajectory][::9] == [50, 0] and len(trajectory) == 10
    assert all(x_t.device.type == "cpu" and x0_hat.shape == x_t.shape for _, x_t, x0_hat in trajectory)
    assert torch.equal(trajectory[-1][1], x) and torch.equal(trajectory[-1][2], x)  # x_0 is its own prediction
    with pytest.raises(ValueError, match="the DDPM sampler runs all T=50 steps"):
        d.sample(ConstantEps(), (1, 3, 8, 8), sampler="ddpm", steps=10)
    with pytest.raises(ValueError, match="sampler must be one of"):
        d.sample(ConstantEps(), (1, 3, 8, 8), sampler="euler")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_perfect_prediction_recovers_x0_and_noise(prediction):
    d = GaussianDiffusion(1000, "linear", prediction)
    x0, noise = torch.rand(4, 3, 8, 8) * 2 - 1, torch.randn(4, 3, 8, 8)
    t = torch.tensor([0, 10, 500, 998])
    x_t = d.q_sample(x0, t, noise)
    target = d.training_target(x0, t, noise)
    x0_hat, eps_hat = d.predict_x0_eps(target, x_t, t, clip=False)
    assert torch.allclose(x0_hat, x0, atol=2e-3) and torch.allclose(eps_hat[1:], noise[1:], atol=2e-3)
    loss = d.training_loss(lambda x, tt: d.training_target(x0, tt, noise), x0, t=t, noise=noise)
    assert loss.item() == pytest.approx(0.0, abs=1e-10)


# ----------------------------------------------------------------------------------------------------------------------
# DPM-Solver++(2M) on Gaussian data, where the exact noise predictor and the exact ODE solution are closed forms.
MU, S = 0.2, 0.15  # data x0 ~ N(MU, S^2) in every pixel


def exact_eps_model(d: GaussianDiffusion):
    """E[eps | x_t] for Gaussian data: x_t = a x0 + s eps, so eps_hat = s (x_t - a MU) / (a^2 S^2 + s^2)."""
    def model(x, t):
        a2 = d.alpha_bar_f64[t].reshape(-1, 1, 1, 1)
        return ((1 - a2).sqrt() * (x.double() - a2.sqrt() * MU) / (a2 * S**2 + 1 - a2)).to(x.dtype)
    return model


def exact_ode_endpoint(d: GaussianDiffusion, x_T: torch.Tensor, t_start: int = -1) -> torch.Tensor:
    """The probability-flow ODE moves every x_t along its standardised value z = (x_t - a MU) / sqrt(a^2 S^2 + s^2),
    which it keeps: x_0 = MU + S z_T (x_T taken as x at index t_start, by default T-1)."""
    a2 = d.alpha_bar_f64[t_start]
    return MU + S * (x_T.double() - a2.sqrt() * MU) / (a2 * S**2 + 1 - a2).sqrt()


@pytest.fixture(scope="module")
def gaussian_case():
    d = GaussianDiffusion(1000, "linear")
    x_T = torch.randn(4000, 1, 1, 1, generator=torch.Generator().manual_seed(0))
    return d, exact_eps_model(d), x_T, exact_ode_endpoint(d, x_T)


def solve(case, sampler, steps):
    d, model, x_T, _ = case
    return d.sample(model, x_T.shape, sampler=sampler, steps=steps, noise=x_T, clip=False).double()


def test_dpm_solver_reaches_the_exact_ode_solution_in_few_steps(gaussian_case):
    exact = gaussian_case[3]
    errors = {steps: (solve(gaussian_case, "dpmpp2m", steps) - exact).abs().max().item() for steps in (10, 25, 100)}
    assert errors[25] < 0.01 and errors[100] < 0.001, errors
    ddim_25 = (solve(gaussian_case, "ddim", 25) - exact).abs().max().item()
    assert errors[25] * 10 < ddim_25, (errors, ddim_25)  # second order on a log-SNR grid vs first order
    x = solve(gaussian_case, "dpmpp2m", 25)
    assert x.mean().item() == pytest.approx(MU, abs=0.01) and x.std().item() == pytest.approx(S, abs=0.01)


def test_dpm_solver_and_ddim_agree_as_steps_grow(gaussian_case):
    gaps = [(solve(gaussian_case, "dpmpp2m", n) - solve(gaussian_case, "ddim", n)).abs().max().item()
            for n in (10, 50, 250, 1000)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])), gaps
    assert gaps[-1] < 0.01, gaps  # DDIM, first order, is still ~5e-3 from the exact ODE solution at T steps


def test_solver_timesteps_are_log_snr_spaced_and_exactly_as_many_as_asked():
    d = GaussianDiffusion(1000, "linear")
    for steps in (1, 2, 10, 25, 999, 1000):
        grid = d.solver_timesteps(steps)
        assert len(grid) == steps and grid == sorted(set(grid)) and grid[-1] == 999
    lam = d.half_log_snr_f64[d.solver_timesteps(20)]
    gaps = lam[:-1] - lam[1:]
    assert gaps.max() < 1.5 * gaps.min() + 0.2  # even in lambda, up to the rounding to integer steps
    with pytest.raises(ValueError, match="solver steps must be between 1 and T=1000"):
        d.solver_timesteps(0)


def test_dpm_solver_returns_images_and_a_trajectory():
    d = GaussianDiffusion(50)
    model = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x, trajectory = d.sample(model, (2, 3, 4, 4), sampler="dpmpp2m", steps=8, return_trajectory=True,
                             generator=torch.Generator().manual_seed(0))
    assert x.shape == (2, 3, 4, 4) and x.abs().max() <= 1
    assert [t for t, _, _ in trajectory] == [t + 1 for t in d.solver_timesteps(8)[::-1]] + [0]  # every step, and x_0
    assert trajectory[1][2].abs().max() <= 1  # x0_hat, clipped, not the solver's state


def test_trajectory_frames_are_evenly_spaced_in_log_snr_and_carry_x0_hat():
    d = GaussianDiffusion(1000, "linear")
    model = lambda x, t: 0.1 * x  # noqa: E731
    x, trajectory = d.sample(model, (1, 3, 2, 2), sampler="ddpm", return_trajectory=True, trajectory_frames=36,
                             generator=torch.Generator().manual_seed(0))
    t = [t for t, _, _ in trajectory]
    assert len(t) == 36 and t[0] == 1000 and t[-1] == 0 and t == sorted(set(t), reverse=True)
    lam = d.half_log_snr_f64[torch.tensor(t[:-1]) - 1]  # the paper's t is index t - 1; x_0 (SNR infinite) left out
    gaps = lam[1:] - lam[:-1]
    assert gaps.max() < 2 * gaps.min()
    evenly_in_t = d.half_log_snr_f64[torch.linspace(999, 0, 35).round().long()]  # what the frames used to be
    assert (evenly_in_t[1:] - evenly_in_t[:-1]).max() > 10 * (evenly_in_t[1:] - evenly_in_t[:-1]).min()
    # each x0_hat is the prediction from its x_t: for this eps-model, x0 = (x_t - s 0.1 x_t) / a, clipped
    _, x_t, x0_hat = trajectory[30]
    a, s = d.alpha_bar_f64[t[30] - 1].sqrt(), (1 - d.alpha_bar_f64[t[30] - 1]).sqrt()
    torch.testing.assert_close(x0_hat, ((1 - 0.1 * s) / a * x_t).float().clamp(-1, 1), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="trajectory_frames must be at least 2"):
        d.sample(model, (1, 3, 2, 2), return_trajectory=True, trajectory_frames=1)


# ----------------------------------------------------------------------------------------------------------------------
# Min-SNR-gamma weighting
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_match_hang_et_al(prediction):
    d = GaussianDiffusion(1000, "linear", prediction, min_snr_gamma=5.0)
    snr = d.alpha_bar_f64 / (1 - d.alpha_bar_f64)
    expected = snr.clamp(max=5) / (snr if prediction == "eps" else snr + 1)
    torch.testing.assert_close(d.loss_weight, expected.float())
    low_snr = snr < 5
    if prediction == "eps":  # eps loss: untouched where SNR <= gamma, down-weighted on the nearly clean steps
        assert torch.all(d.loss_weight[low_snr] == 1) and torch.all(d.loss_weight[~low_snr] < 1)
    assert GaussianDiffusion(1000, prediction=prediction).loss_weight.eq(1).all()


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_loss_is_the_weighted_per_image_mse(prediction):
    torch.manual_seed(0)
    x0, noise = torch.rand(6, 3, 4, 4) * 2 - 1, torch.randn(6, 3, 4, 4)
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    model = lambda x, t: 0.5 * x  # noqa: E731
    plain = GaussianDiffusion(1000, prediction=prediction)
    weighted = GaussianDiffusion(1000, prediction=prediction, min_snr_gamma=5.0)
    target = plain.training_target(x0, t, noise)
    per_image = ((model(plain.q_sample(x0, t, noise), t) - target) ** 2).flatten(1).mean(1)
    assert plain.training_loss(model, x0, t=t, noise=noise).item() == pytest.approx(per_image.mean().item(), rel=1e-6)
    expected = (weighted.loss_weight[t] * per_image).mean().item()
    assert weighted.training_loss(model, x0, t=t, noise=noise).item() == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError, match="min_snr_gamma must be positive"):
        GaussianDiffusion(1000, min_snr_gamma=0)


# ----------------------------------------------------------------------------------------------------------------------
# EDM's noise distribution and loss weight, written over the discrete steps
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lognormal_noise_levels_follow_edm_distribution(schedule):
    d = GaussianDiffusion(1000, schedule, noise_sampling="lognormal")
    assert d.timestep_probs.sum().item() == pytest.approx(1.0, abs=1e-6)
    t = d.sample_timesteps(200_000, device="cpu", generator=torch.Generator().manual_seed(0))
    log_sigma = 0.5 * torch.log((1 - d.alpha_bar_f64[t]) / d.alpha_bar_f64[t])
    # ln(sigma) ~ N(-1.2, 1.2^2) up to the grid's spacing (the steps are ~0.01-0.05 apart in ln sigma there)
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.03)
    uniform = GaussianDiffusion(1000, schedule)
    assert torch.equal(uniform.sample_timesteps(8, device="cpu", generator=torch.Generator().manual_seed(0)),
                       torch.randint(0, 1000, (8,), generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_lognormal_loss_is_edm_lambda_on_the_x0_error(prediction):
    d = GaussianDiffusion(1000, "linear", prediction, noise_sampling="lognormal")
    torch.manual_seed(0)
    x0, noise = torch.rand(5, 3, 4, 4) * 2 - 1, torch.randn(5, 3, 4, 4)
    t = torch.tensor([0, 30, 200, 600, 999])
    model = lambda x, tt: 0.3 * x  # noqa: E731
    x_t = d.q_sample(x0, t, noise)
    x0_hat, _ = d.predict_x0_eps(model(x_t, t), x_t, t, clip=False)
    a = d.alpha_bar_f64[t]
    sigma2 = (1 - a) / a
    lam = (sigma2 + 0.25) / (sigma2 * 0.25)  # EDM's lambda with sigma_data = 0.5
    per_image_x0 = ((x0_hat.double() - x0.double()) ** 2).flatten(1).mean(1)
    expected = (lam * per_image_x0).mean().item()
    assert d.training_loss(model, x0, t=t, noise=noise).item() == pytest.approx(expected, rel=1e-3)
    with pytest.raises(ValueError, match="EDM's own loss weight"):
        GaussianDiffusion(1000, noise_sampling="lognormal", min_snr_gamma=5.0)
    with pytest.raises(ValueError, match="noise_sampling must be one of"):
        GaussianDiffusion(1000, noise_sampling="beta")
