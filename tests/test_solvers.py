"""The step grids and DPM-Solver++ multistep solvers (ddpm/solvers.py) against closed forms, the guidance interval, and
the counted network calls."""
import pytest
import torch

from ddpm.diffusion import GaussianDiffusion
from ddpm.guidance import guided
from ddpm.sample import generate
from ddpm.solvers import GRIDS, calls_per_image, counted_calls, sigma_interval, step_grid
from ddpm.unet import UNet
from test_diffusion import MU, S, exact_eps_model, exact_ode_endpoint
from test_guidance import trained_like


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
@pytest.mark.parametrize("grid", GRIDS)
def test_every_grid_holds_exactly_the_steps_asked_from_its_top_down_to_zero(schedule, grid):
    d = GaussianDiffusion(1000, schedule)
    for lambda_min, top in ((None, 999), (-4.0, int((d.half_log_snr_f64 >= -4).nonzero().max()))):
        assert top == 999 or d.half_log_snr_f64[top] >= -4 > d.half_log_snr_f64[top + 1]
        for steps in (1, 2, 5, 8, 10, 20, 50, top + 1):
            indices = step_grid(d, steps, grid, lambda_min=lambda_min)
            assert len(indices) == steps and indices == sorted(set(indices), reverse=True), (steps, indices)
            assert indices[0] == top and (steps == 1 or indices[-1] == 0)


def spacing_ratio(values: torch.Tensor) -> float:
    gaps = (values[1:] - values[:-1]).abs()
    return (gaps.max() / gaps.min()).item()


def test_grids_are_even_in_their_own_variable():
    d = GaussianDiffusion(1000, "linear")  # smooth in t: rounding to integer steps moves each point a little
    lam = d.half_log_snr_f64
    assert spacing_ratio(torch.tensor(step_grid(d, 10, "time"), dtype=torch.float64)) < 1.01
    assert spacing_ratio(lam[step_grid(d, 10, "lambda")]) < 1.1
    sigma_root = torch.exp(-lam[step_grid(d, 10, "edm")] / 7)  # EDM: sigma^(1/rho) evenly spaced
    assert spacing_ratio(sigma_root) < 1.1
    assert len({tuple(step_grid(d, 10, grid)) for grid in GRIDS}) == len(GRIDS)  # and they are different grids


def test_grid_errors_name_the_option():
    d = GaussianDiffusion(100, "cosine")
    with pytest.raises(ValueError, match="grid must be one of"):
        step_grid(d, 10, "karras")
    with pytest.raises(ValueError, match="steps must be between 1 and 100"):
        step_grid(d, 101, "lambda")
    with pytest.raises(ValueError, match="lambda_min=9 is above"):
        step_grid(d, 10, "lambda", lambda_min=9)
    with pytest.raises(ValueError, match="holds no step"):
        sigma_interval(d, 1e6, 1e7)
    with pytest.raises(ValueError, match="low < high"):
        sigma_interval(d, 2.0, 1.0)


# ----------------------------------------------------------------------------------------------------------------------
# On Gaussian data the exact x0 predictor and the exact end of the probability-flow ODE are closed forms.
@pytest.fixture(scope="module")
def gaussian():
    d = GaussianDiffusion(1000, "linear")
    x = torch.randn(2000, 1, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return d, exact_eps_model(d), x  # in float64: the solvers' own error, not float32's


def ode_error(case, sampler, steps, grid, lambda_min=None) -> float:
    d, model, x = case
    top = step_grid(d, steps, grid, lambda_min=lambda_min)[0]
    out = d.sample(model, x.shape, sampler=sampler, steps=steps, noise=x, clip=False, grid=grid, lambda_min=lambda_min)
    return (out.double() - exact_ode_endpoint(d, x, top)).abs().max().item()


@pytest.mark.parametrize("grid", GRIDS)
def test_every_solver_reaches_the_exact_ode_solution_on_every_grid(gaussian, grid):
    for sampler in ("ddim", "dpmpp2m", "dpmpp3m"):
        errors = [ode_error(gaussian, sampler, n, grid) for n in (10, 50, 250)]
        # closer with more steps, down to the floor of the last step, which returns x0_hat at t = 0 (~1e-3 here)
        assert errors[-1] < min(errors[0], 0.025), (sampler, errors)


def test_higher_order_is_more_accurate(gaussian):
    # x0_hat is a sigmoid of lambda here, which a cubic extrapolates badly over the large gaps of 8-15 steps, so the
    # orders are compared from 20 steps on; which wins on flowers at few steps is measured (benchmarks/samplers.py)
    for steps in (20, 30):
        for lambda_min in (None, -3.0):  # also from a truncated start, against the exact flow from there
            ddim, second, third = (ode_error(gaussian, s, steps, "lambda", lambda_min)
                                   for s in ("ddim", "dpmpp2m", "dpmpp3m"))
            assert third < second < ddim / 5, (steps, lambda_min, ddim, second, third)


def test_truncated_grid_keeps_the_data_distribution(gaussian):
    d, model, x = gaussian
    out = d.sample(model, x.shape, sampler="dpmpp2m", steps=20, noise=x, clip=False, lambda_min=-4.0).double()
    assert out.mean().item() == pytest.approx(MU, abs=0.01) and out.std().item() == pytest.approx(S, abs=0.01)


# ----------------------------------------------------------------------------------------------------------------------
# Guidance in an interval of noise levels (Kynkaanniemi et al. 2024), and the network calls it saves.
def tiny_conditional() -> UNet:
    return trained_like(UNet(16, base_channels=16, channel_mult=(1, 2), num_classes=3))


def test_guidance_interval_is_the_plain_conditional_step_outside_and_the_guided_one_inside():
    net, x = tiny_conditional(), torch.randn(2, 3, 16, 16)
    labels = torch.tensor([0, 2])
    interval = (300, 600)
    with torch.no_grad():
        for t_value in (0, 299, 300, 450, 600, 601, 999):
            t = torch.full((2,), t_value)
            limited = guided(net, labels, 3.0, interval)(x, t)
            expected = guided(net, labels, 3.0)(x, t) if 300 <= t_value <= 600 else net(x, t, labels)
            assert torch.equal(limited, expected), t_value
            assert not torch.equal(net(x, t, labels), guided(net, labels, 3.0)(x, t))  # the two differ


def test_sigma_interval_picks_the_steps_of_those_noise_levels():
    d = GaussianDiffusion(1000, "cosine")
    low, high = sigma_interval(d, 0.28, 5.42)
    sigma = torch.exp(-d.half_log_snr_f64)
    assert sigma[low] > 0.28 >= sigma[low - 1] and sigma[high] <= 5.42 < sigma[high + 1]


@pytest.mark.parametrize("sampler,steps,interval", [("dpmpp2m", 8, None), ("dpmpp3m", 8, (0.28, 5.42)),
                                                     ("ddim", 6, (0.5, 2.0))])
def test_counted_network_calls_equal_the_calls_made(sampler, steps, interval):
    net, diffusion = tiny_conditional(), GaussianDiffusion(100, "cosine", prediction="v")
    labels = torch.tensor([0, 1, 2, 1])
    with counted_calls(net) as count:
        generate(net, diffusion, 4, sampler=sampler, steps=steps, labels=labels, guidance_scale=2.0, batch_size=4,
                 progress=False, guidance_interval=interval)
    indices = step_grid(diffusion, steps, "time" if sampler == "ddim" else "lambda")
    expected = calls_per_image(indices, 2.0, sigma_interval(diffusion, *interval) if interval else None)
    assert count["images"] == 4 * expected
    assert (interval is None) == (expected == 2 * steps)  # the interval saves calls: some steps fall outside it
    assert expected > steps  # and some fall inside it
    with counted_calls(net) as count:
        generate(net, diffusion, 4, sampler=sampler, steps=steps, labels=labels, guidance_scale=1.0, batch_size=4,
                 progress=False)
    assert count["images"] == 4 * calls_per_image(indices, 1.0) == 4 * steps


def test_guidance_interval_needs_labels():
    net = trained_like(UNet(16, base_channels=16, channel_mult=(1, 2)))
    with pytest.raises(ValueError, match="guidance_interval needs a class-conditional"):
        generate(net, GaussianDiffusion(50), 2, sampler="ddim", steps=4, progress=False, guidance_interval=(0.1, 1))
    assert calls_per_image([3, 2, 1], None) == calls_per_image([3, 2, 1], 2.0, (5, 9)) == 3
