"""Sampling in batches (ddpm.sample.generate): static batch shapes, channels_last and one compiled network."""
import pytest
import torch
from torch import nn

from ddpm import sample
from ddpm.diffusion import GaussianDiffusion
from ddpm.sample import generate


class Recorder(nn.Module):
    """A stand-in network that records the batch size and memory format of every call."""

    image_size = 8

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(0.1))
        self.calls = []

    def forward(self, x, t):
        self.calls.append((x.shape[0], x.is_contiguous(memory_format=torch.channels_last)))
        return self.scale * x


def test_every_batch_has_the_same_shape_and_the_surplus_is_dropped():
    model, diffusion = Recorder(), GaussianDiffusion(20)
    ten = generate(model, diffusion, 10, batch_size=4, steps=3, progress=False)
    assert ten.shape == (10, 3, 8, 8) and ten.dtype == torch.uint8
    assert {size for size, _ in model.calls} == {4}  # 3 full batches: one graph serves them all
    twelve = generate(model, diffusion, 12, batch_size=4, steps=3, progress=False)
    assert torch.equal(ten, twelve[:10])  # image k does not depend on how many are asked for
    model.calls.clear()
    generate(model, diffusion, 3, batch_size=64, steps=3, progress=False)
    assert {size for size, _ in model.calls} == {3}  # fewer images than a batch: one batch of exactly that many


def test_channels_last_reaches_the_network_by_default_and_can_be_turned_off():
    model, diffusion = Recorder(), GaussianDiffusion(20)
    generate(model, diffusion, 2, steps=2, progress=False)  # the default, on the CPU too (faster there)
    assert model.calls and all(cl for _, cl in model.calls)
    model.calls.clear()
    generate(model, diffusion, 2, steps=2, channels_last=False, progress=False)
    assert model.calls and not any(cl for _, cl in model.calls)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp2m"])
def test_the_network_is_compiled_once_and_the_sampler_loop_is_not(monkeypatch, sampler):
    compiled = []

    def fake_compile(module, **kwargs):
        compiled.append(module)
        return module

    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(sample, "_compiled", type(sample._compiled)())
    model, diffusion = Recorder(), GaussianDiffusion(20)
    for _ in range(2):
        generate(model, diffusion, 4, batch_size=2, sampler=sampler, steps=3, compile=True, progress=False)
    assert compiled == [model]


def test_slerp_keeps_the_ends_and_the_norm_of_gaussian_noise():
    from ddpm.sample import slerp

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 32, 32, generator=g), torch.randn(3, 32, 32, generator=g)
    path = slerp(a, b, [0.0, 0.25, 0.5, 1.0])
    assert path.shape == (4, 3, 32, 32)
    assert torch.allclose(path[0], a, atol=1e-5) and torch.allclose(path[-1], b, atol=1e-5)
    norms = path.flatten(1).norm(dim=1)
    # the arc keeps the norm of the noise (two draws are nearly orthogonal); the straight line would lose ~29%
    assert torch.allclose(norms, a.norm().expand(4), rtol=0.03)
    assert ((a + b) / 2).norm() < 0.75 * a.norm()
    with pytest.raises(ValueError, match="one shape"):
        slerp(a, b[:2], [0.5])


def test_a_compiler_that_fails_falls_back_to_eager_execution():
    # A backend that raises stands for Inductor breaking on an unseen GPU or driver: the network still runs, eagerly
    from ddpm.distributed import compile_module

    def broken_backend(graph_module, example_inputs):
        raise RuntimeError("this compiler cannot build for this device")

    torch._dynamo.reset()
    net = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.SiLU(), torch.nn.Linear(5, 2))
    x = torch.randn(4, 3)
    out = compile_module(net, backend=broken_backend)(x)
    assert torch.equal(out, net(x))
