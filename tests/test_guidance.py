"""Class conditioning and classifier-free guidance: the blend at s = 0 and 1, guidance on a two-class Gaussian mixture
whose noise predictors are closed forms, label dropout, the labels a run keeps, and the error lines."""
import json
import math

import pytest
import torch

from ddpm.cli import main
from ddpm.config import get_config
from ddpm.data import DatasetError, ImageData
from ddpm.diffusion import GaussianDiffusion
from ddpm.guidance import guided, network_calls
from ddpm.labels import Classes, label_names
from ddpm.sample import generate
from ddpm.train import TrainLoop, load_run, train
from ddpm.unet import UNet


def trained_like(net: torch.nn.Module) -> torch.nn.Module:
    """Give every zero-initialised weight some value, as training would, so that outputs depend on the inputs."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            if torch.count_nonzero(p) == 0:
                p.normal_(std=0.1)
    return net.eval()


def test_guidance_scale_zero_is_the_null_label_and_one_the_label_exactly():
    net = trained_like(UNet(32, base_channels=16, channel_mult=(1, 2), num_classes=5))
    x, t = torch.randn(3, 3, 32, 32), torch.tensor([10, 500, 900])
    labels, null = torch.tensor([0, 3, 4]), torch.full((3,), 5)
    with torch.no_grad():
        conditional, unconditional = net(x, t, labels), net(x, t, null)
        assert not torch.allclose(conditional, unconditional)  # the label matters
        assert torch.equal(guided(net, labels, 0.0)(x, t), unconditional)
        assert torch.equal(guided(net, labels, 1.0)(x, t), conditional)
        torch.testing.assert_close(guided(net, labels, 3.0)(x, t), unconditional + 3 * (conditional - unconditional),
                                   rtol=1e-4, atol=1e-5)
        assert torch.equal(net(x, t), unconditional)  # no labels: the null label
    assert [network_calls(s) for s in (None, 0, 1, 2.5)] == [1, 1, 1, 2]


def test_unconditional_unet_is_unchanged_and_refuses_labels():
    plain = UNet(32, base_channels=16, channel_mult=(1, 2))
    assert not any("label" in name for name in plain.state_dict())  # old checkpoints still load
    with pytest.raises(ValueError, match="unconditional"):
        plain(torch.randn(1, 3, 32, 32), torch.tensor([1]), torch.tensor([0]))
    with pytest.raises(ValueError, match="class-conditional"):
        guided(plain, torch.tensor([0]), 2.0)


# ----------------------------------------------------------------------------------------------------------------------
# Two classes of 1-pixel data, x0 ~ N(+-MU, S^2), half each: E[eps | x_t, c] is a closed form, and the unconditional
# E[eps | x_t] is its average weighted by the posterior class probabilities p(c | x_t).
MU, S = 0.3, 0.25
MEANS = torch.tensor([-MU, MU], dtype=torch.float64)


class MixtureEps(torch.nn.Module):
    num_classes = 2

    def __init__(self, diffusion: GaussianDiffusion):
        super().__init__()
        self.alpha_bar = diffusion.alpha_bar_f64

    def forward(self, x, t, labels):
        a2 = self.alpha_bar[t].reshape(-1, 1, 1, 1)
        var = a2 * S**2 + 1 - a2  # of x_t given the class
        xd = x.double()
        per_class = [(1 - a2).sqrt() * (xd - a2.sqrt() * m) / var for m in MEANS]  # E[eps | x_t, c]
        log_p = torch.stack([-(xd - a2.sqrt() * m) ** 2 / (2 * var) for m in MEANS])
        weights = torch.softmax(log_p, dim=0)  # p(c | x_t), equal priors
        null = weights[0] * per_class[0] + weights[1] * per_class[1]
        choice = labels.reshape(-1, 1, 1, 1)
        eps = torch.where(choice == 0, per_class[0], torch.where(choice == 1, per_class[1], null))
        return eps.to(x.dtype)


@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpmpp2m", 25), ("ddpm", None)])
def test_guided_samples_move_toward_their_class_as_the_scale_grows(sampler, steps):
    """s = 0 samples the mixture whatever the label, s = 1 the class itself, and s > 1 goes further along: towards the
    class mean and past it, away from the other class (guidance adds (s - 1) grad log p(c | x_t))."""
    diffusion = GaussianDiffusion(1000, "linear")
    model = MixtureEps(diffusion)
    n = 2000
    labels = torch.arange(n) % 2
    side = (2 * labels - 1).double().reshape(-1, 1, 1, 1)  # +1 where the class mean is +MU
    position, correct, spread = {}, {}, {}
    for scale in (0.0, 1.0, 2.0, 4.0):
        noise = torch.randn(n, 1, 1, 1, generator=torch.Generator().manual_seed(0))
        x = diffusion.sample(guided(model, labels, scale), noise.shape, sampler=sampler, steps=steps, noise=noise,
                             clip=False, generator=torch.Generator().manual_seed(1)).double()
        along = side * x  # position along the direction from the other class's mean to this one's
        position[scale], spread[scale] = along.mean().item(), along.std().item()
        correct[scale] = (along > 0).double().mean().item()  # nearer its own mean than the other's
    assert position[0.0] == pytest.approx(0.0, abs=0.02) and correct[0.0] == pytest.approx(0.5, abs=0.05)
    assert position[1.0] == pytest.approx(MU, abs=0.02) and spread[1.0] == pytest.approx(S, rel=0.1)
    assert correct[1.0] == pytest.approx(0.5 * (1 + math.erf(MU / (S * math.sqrt(2)))), abs=0.04)
    assert position[0.0] < position[1.0] < position[2.0] < position[4.0], position
    assert correct[0.0] < correct[1.0] < correct[2.0] < correct[4.0], correct


# ----------------------------------------------------------------------------------------------------------------------
def two_class_data(n: int = 64) -> ImageData:
    """Class "a" images are black, class "b" images white: a batch's pixels say which label each image had."""
    labels = ["a" if i % 3 else "b" for i in range(n)]
    images = torch.stack([torch.full((3, 32, 32), 0 if label == "a" else 255, dtype=torch.uint8) for label in labels])
    return ImageData(images, labels, "two-class", "memory", None, [str(i) for i in range(n)])


def test_label_dropout_draws_the_null_label_at_its_rate_and_keeps_each_images_label(tiny_config):
    config = tiny_config.replace(num_classes=4, label_dropout=0.3, flip=False)
    loop = TrainLoop(config, data=two_class_data(), verbose=False)
    assert loop.classes.labels == ("a", "b") and loop.classes.counts == (42, 22)
    nulls, kept = 0, 0
    for _ in range(500):
        x0, _, _, labels, _ = loop.draw_batch()
        is_null = labels == 4
        nulls += int(is_null.sum())
        kept += int((~is_null).sum())
        white = x0[:, 0, 0, 0] > 0  # class "b" (index 1)
        assert torch.equal(labels[~is_null], white[~is_null].long())
    rate, sd = nulls / (nulls + kept), math.sqrt(0.3 * 0.7 / (nulls + kept))
    assert abs(rate - 0.3) < 4 * sd, rate
    # and a rate of 0 never drops a label
    loop = TrainLoop(config.replace(label_dropout=0.0, runs_dir=config.runs_dir + "-0"), data=two_class_data(),
                     verbose=False)
    assert all((loop.draw_batch()[3] < 2).all() for _ in range(50))


def test_a_conditional_run_keeps_its_labels_resumes_exactly_and_samples_by_label(tiny_config, tmp_path):
    config = tiny_config.replace(num_classes=3, label_dropout=0.2)
    first = TrainLoop(config, data=two_class_data(), verbose=False)
    first.run(until_step=4)
    resumed = TrainLoop(config, data=two_class_data(), verbose=False)
    resumed.run()
    straight = TrainLoop(config.replace(runs_dir=str(tmp_path / "straight")), data=two_class_data(), verbose=False)
    straight.run()
    for a, b in zip(resumed.model.state_dict().values(), straight.model.state_dict().values()):
        assert torch.equal(a, b)
    saved = json.loads((config.run_dir / "labels.json").read_text())
    assert [(r["index"], r["label"], r["images"]) for r in saved] == [(0, "a", 42), (1, "b", 22)]

    run = load_run(config.run_dir)  # the labels come from the checkpoint: no data needed
    assert run.classes == Classes(("a", "b"), ("a", "b"), (42, 22))
    images = generate(run.ema_model, run.diffusion, 3, labels=torch.tensor([0, 1, 1]), guidance_scale=2.0, steps=3,
                      progress=False)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    with pytest.raises(ValueError, match="needs labels"):
        generate(run.ema_model, run.diffusion, 2, steps=2, progress=False)
    assert generate(run.ema_model, run.diffusion, 2, steps=2, guidance_scale=0, progress=False).shape[0] == 2
    with pytest.raises(ValueError, match="2 labels for 3 images"):
        generate(run.ema_model, run.diffusion, 3, labels=torch.tensor([0, 1]), steps=2, progress=False)

    other = ImageData(two_class_data().images, ["a"] * 32 + ["c"] * 32, "two-class", "memory", None)
    with pytest.raises(ValueError, match="other labels"):
        TrainLoop(config, data=other, verbose=False)


def test_flower_labels_sort_by_number_and_carry_their_species_names():
    names = label_names("flowers102")
    assert len(names) == 102 and names["54"] == "sunflower" and names["77"] == "passion flower"
    data = ImageData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), ["54", "9", "54", "102"], "flowers102", "memory", None)
    classes = Classes.from_data(data, 102)
    assert classes.labels == ("9", "54", "102") and classes.names == ("monkshood", "sunflower", "blackberry lily")
    assert classes.index("Sunflower") == classes.index("54") == 1 and classes.index(" MONKSHOOD ") == 0
    draws = classes.draw(4000, seed=0)
    assert abs((draws == 1).double().mean().item() - 0.5) < 0.03  # "54" is half the data
    assert torch.equal(draws, classes.draw(4000, seed=0))


def test_conditional_data_errors_name_the_dataset():
    unlabelled = ImageData(torch.zeros(3, 3, 8, 8, dtype=torch.uint8), ["x", "", ""], "folder:/somewhere", "memory",
                           None)
    with pytest.raises(DatasetError, match=r"'folder:/somewhere' has 2 of 3 images without a label"):
        Classes.from_data(unlabelled, 5)
    with pytest.raises(DatasetError, match=r"has 2 labels, more than num_classes=1"):
        Classes.from_data(two_class_data(), 1)
    with pytest.raises(ValueError, match="baseline UNet is unconditional"):
        get_config("smoke", use_env=False, model="baseline", num_classes=3)
    with pytest.raises(ValueError, match="label_dropout must be in"):
        get_config("smoke", use_env=False, label_dropout=1.0)


def test_cli_samples_a_label_by_name_and_refuses_unknown_ones_in_one_line(tmp_path, capsys):
    runs = str(tmp_path / "runs")
    common = ["--profile", "smoke", "--train-steps", "2", "--base-channels", "8", "--batch-size", "2", "--no-progress"]
    # the first 8 flowers are all passion flowers (label 77)
    assert main(["train", *common, "--runs-dir", runs, "--limit-images", "8", "--num-classes", "102"]) == 0
    run_dir = tmp_path / "runs" / "smoke-unet-flowers102-32px"
    out = tmp_path / "passion.png"
    assert main(["sample", "--checkpoint", str(run_dir), "--label", "Passion Flower", "--guidance-scale", "3",
                 "--num", "4", "--steps", "2", "--out", str(out), "--gif", str(tmp_path / "p.gif")]) == 0
    assert out.is_file() and "of 'passion flower' (label 77), guidance 3" in capsys.readouterr().out

    assert main(["sample", "--checkpoint", str(run_dir), "--label", "tulip", "--num", "4", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--label 'tulip': no such label" in err and "labels.json" in err

    plain = str(tmp_path / "plain")
    assert main(["train", *common, "--runs-dir", plain, "--limit-images", "8"]) == 0
    plain_run = str(tmp_path / "plain" / "smoke-unet-flowers102-32px")
    for flag in (["--label", "rose"], ["--guidance-scale", "2"]):
        assert main(["sample", "--checkpoint", plain_run, *flag, "--num", "2", "--steps", "2"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and f"{flag[0]}: run" in err and "is unconditional" in err
    assert main(["fid", "--checkpoint", plain_run, "--guidance-scale", "2", "--num-samples", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "guidance_scale: run" in err and "is unconditional" in err


def test_cli_conditional_training_on_unlabelled_images_is_one_line(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 50, 0, 0)).save(folder / f"{i}.png")
    assert main(["train", "--profile", "smoke", "--runs-dir", str(tmp_path / "runs"), "--dataset", f"folder:{folder}",
                 "--num-classes", "4", "--train-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "3 of 3 images without a label" in err


def test_a_checkpoint_that_does_not_fit_its_config_is_one_line(tiny_config, capsys):
    train(tiny_config, verbose=False)
    path = tiny_config.run_dir / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["config"]["base_channels"] = 16  # the weights are of base 8
    torch.save(state, path)
    assert main(["sample", "--checkpoint", str(tiny_config.run_dir), "--num", "2", "--steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(path) in err and "'time_mlp.0.weight' has shape (32, 8) in the file" in err


def test_a_runs_guidance_scale_is_its_default_for_sampling_and_scoring(tiny_config, capsys):
    config = tiny_config.replace(num_classes=3, guidance_scale=3.0)
    train(config, data=two_class_data(), verbose=False)
    run = load_run(config.run_dir)
    assert run.guidance_scale == 3.0
    kwargs = run.guidance(64, seed=5)
    assert kwargs["guidance_scale"] == 3.0 and torch.equal(kwargs["labels"], run.classes.draw(64, seed=5))
    one = run.guidance(64, seed=5, one_label=True)["labels"]
    assert len(one) == 64 and len(set(one.tolist())) == 1
    # the sampling model is the guided EMA network: the same samples as generate() with those labels and that scale
    x = torch.randn(4, 3, 32, 32)
    t = torch.full((4,), 500)
    expected = guided(run.ema_model, run.guidance(4, seed=1)["labels"], 3.0)(x, t)
    assert torch.equal(run.sampling_model(4, seed=1)(x, t), expected)
    assert main(["sample", "--checkpoint", str(config.run_dir), "--num", "2", "--steps", "2", "--out",
                 str(config.run_dir / "g.png")]) == 0
    assert ", guidance 3 from the EMA weights" in capsys.readouterr().out  # no --guidance-scale: the run's
    unconditional = load_run(train(tiny_config.replace(runs_dir=tiny_config.runs_dir + "-u"), verbose=False).run_dir)
    assert unconditional.guidance(4) == {} and unconditional.sampling_model(4) is unconditional.ema_model
    assert unconditional.guidance_scale is None
