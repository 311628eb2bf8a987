import pytest
import torch

from ddpm.unet import BaselineUNet, UNet, count_parameters, timestep_embedding


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("batch", [1, 2, 3])
def test_both_networks_keep_the_input_shape(size, batch):
    torch.manual_seed(0)
    x, t = torch.randn(batch, 3, size, size), torch.randint(0, 1000, (batch,))
    for net in (
        BaselineUNet(size, base_channels=8, channel_mult=(1, 2, 2, 2)),
        UNet(size, base_channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=2, attention_resolutions=(16,)),
    ):
        assert net(x, t).shape == x.shape


def test_default_improved_unet_is_ddpm_sized():
    # Ho et al.'s CIFAR-10 network (35.7M) is the reference: same widths, 4 levels, attention at 16x16.
    assert 30e6 < count_parameters(UNet(64)) < 40e6


def test_improved_unet_starts_as_zero_and_depends_on_t():
    net = UNet(32, base_channels=16, channel_mult=(1, 2))
    x = torch.randn(2, 3, 32, 32)
    assert torch.count_nonzero(net(x, torch.tensor([1, 2]))) == 0  # zero-initialised output conv
    # Zero-initialised branches ignore t at first; give every zeroed weight some value, as training would.
    with torch.no_grad():
        for p in net.parameters():
            if p.dim() > 1 and torch.count_nonzero(p) == 0:
                p.normal_(std=0.1)
    a, b = net(x, torch.tensor([1, 1])), net(x, torch.tensor([900, 900]))
    assert not torch.allclose(a, b)


def test_timestep_embedding_is_sinusoidal():
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    assert torch.allclose(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    assert torch.allclose(emb[1, :4] ** 2 + emb[1, 4:] ** 2, torch.ones(4))


@pytest.mark.parametrize("cls", [UNet, BaselineUNet])
def test_image_size_that_cannot_be_halved_gives_a_clear_error(cls):
    with pytest.raises(ValueError, match="image_size=36 cannot be halved 3 times.*multiple of 8"):
        cls(36, channel_mult=(1, 2, 2, 2))


def test_attention_resolution_that_never_occurs_is_refused():
    with pytest.raises(ValueError, match=r"attention_resolutions \[7\] never occur"):
        UNet(32, channel_mult=(1, 2), attention_resolutions=(7,))
