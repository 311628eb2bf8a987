"""A run folder, read: the network and diffusion a config describes, and a trained run (its folder, whose layout
ddpm/train.py describes, or a shipped weights folder of ddpm/weights.py) loaded for sampling and evaluation. Sampling,
`fid`, `export` and the benchmarks load runs from here, without importing the training loop."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ddpm.cascade import as_cascade
from ddpm.checkpoint import CHECKPOINT_NAME, load_checkpoint, load_weights
from ddpm.config import RUNTIME_FIELDS, Config
from ddpm.diffusion import GaussianDiffusion
from ddpm.files import read_json_lines
from ddpm.guidance import guided
from ddpm.labels import Classes
from ddpm.unet import BaselineUNet, UNet

STATS_NAME = "stats.jsonl"


def build_model(config: Config) -> nn.Module:
    if config.model == "baseline":
        return BaselineUNet(config.resolution, config.base_channels, config.channel_mult, timesteps=config.timesteps)
    return UNet(
        config.resolution,
        config.base_channels,
        config.channel_mult,
        num_res_blocks=config.num_res_blocks,
        attention_resolutions=config.attention_resolutions,
        dropout=config.dropout,
        scale_shift_norm=config.scale_shift_norm,
        num_classes=config.num_classes,
        mid_attention=config.mid_attention,
        cond_channels=3 if config.lowres else 0,
    )


def count_config_parameters(config: Config) -> int:
    """Parameters of the config's network, built on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(config).parameters())


def build_diffusion(config: Config) -> GaussianDiffusion:
    return GaussianDiffusion(config.timesteps, config.schedule, config.prediction, min_snr_gamma=config.min_snr_gamma,
                             noise_sampling=config.noise_sampling, log_snr_shift=config.log_snr_shift)



def config_differences(saved: Config, wanted: Config) -> dict:
    a, b = saved.to_dict(), wanted.to_dict()
    return {k: (a[k], b[k]) for k in a if k not in RUNTIME_FIELDS and a[k] != b[k]}



def read_stats(run_dir: Path) -> list[dict]:
    return read_json_lines(Path(run_dir) / STATS_NAME)


@dataclass
class Run:
    config: Config
    model: nn.Module | None  # raw weights, eval mode (None: a shipped weights folder)
    ema_model: nn.Module  # EMA weights, eval mode: sample from these
    diffusion: GaussianDiffusion
    step: int
    seconds: float
    run_dir: Path
    classes: Classes | None = None  # conditional runs: their labels (class index -> dataset label, name, frequency)
    shipped: bool = False  # a shipped weights folder (ddpm/weights.py): EMA weights only (model is None), read-only

    @property
    def out_dir(self) -> Path:
        """Where grids and FID results made from this run go: its run folder, or outputs/<name>/ for shipped weights
        (never written into)."""
        from ddpm.weights import outputs_dir

        return outputs_dir(self.run_dir) if self.shipped else self.run_dir

    @property
    def guidance_scale(self) -> float | None:
        """The scale this run is sampled with by default: its config's (1 if unset) when conditional, else None."""
        return None if self.classes is None else self.config.sampling_guidance

    def guidance(self, num: int, seed: int = 0, one_label: bool = False) -> dict:
        """generate()'s labels= and guidance_scale= for `num` samples of a conditional run (labels drawn with the
        data's frequencies, or one such label for all with one_label; the run's guidance scale); {} for an
        unconditional run."""
        if self.classes is None:
            return {}
        labels = self.classes.draw(1 if one_label else num, seed=seed).expand(num)
        return {"labels": labels, "guidance_scale": self.guidance_scale}

    def sampling_model(self, num: int, seed: int = 0, one_label: bool = False,
                       device: str | torch.device | None = None) -> nn.Module:
        """The (x_t, t) network the samplers call for `num` samples: the EMA network, guided as guidance() says."""
        kwargs = self.guidance(num, seed, one_label)
        if not kwargs:
            return self.ema_model
        device = device or next(self.ema_model.parameters()).device
        return guided(self.ema_model, kwargs["labels"].to(device), kwargs["guidance_scale"])

    def weights(self, raw: bool = False) -> nn.Module:
        """The EMA network, or the raw one (raw=True), which a shipped folder does not have."""
        if not raw:
            return self.ema_model
        if self.model is None:
            raise ValueError(f"--raw: {self.run_dir} holds shipped EMA weights only, no raw weights; sample its EMA "
                             f"weights (leave out --raw), or train the run again to get them")
        return self.model

    def set_aug_t(self, aug_t: int | None) -> int | None:
        """A cascade's stage samples at augmentation level aug_t (None: its config's); returns the level in force,
        or None for a run that is no cascade (which refuses a level)."""
        if not self.config.lowres:
            if aug_t is not None:
                raise ValueError(f"--aug-t: run {self.run_dir} is no cascade (its config has no lowres)")
            return None
        level = self.config.aug_t if aug_t is None else aug_t
        if not 0 <= level < self.config.timesteps:
            raise ValueError(f"--aug-t must be in 0..{self.config.timesteps - 1}, got {level}")
        for net in (self.model, self.ema_model):
            if net is not None:
                net.aug_t = level
        return level

    @property
    def finished(self) -> bool:
        return self.config.finished(self.step, self.seconds)

    @property
    def images_seen(self) -> int:
        return self.step * self.config.batch_size

    @property
    def stats(self) -> list[dict]:
        return read_stats(self.run_dir)


def load_run(run_dir: Path | str, device: str | torch.device = "cpu") -> Run:
    """Rebuild the networks (raw and EMA) and the diffusion process of a run folder from its checkpoint; or, from a
    shipped weights folder (ddpm/weights.py), its EMA network alone, after checking its SHA256."""
    from ddpm.weights import WEIGHTS_NAME, ema_state_dict, is_weights_folder, load_weights_file

    run_dir = Path(run_dir)
    if is_weights_folder(run_dir):
        state = load_weights_file(run_dir)
        config = Config.from_dict(state["config"])
        ema_model = build_model(config)
        load_weights(ema_model, state["ema"], run_dir / WEIGHTS_NAME, "EMA")
        classes = Classes.from_list(state["classes"]) if state.get("classes") else None
        diffusion = build_diffusion(config).to(device)
        return Run(config=config, model=None, diffusion=diffusion, step=state["step"],
                   ema_model=as_cascade(config, ema_model.to(device).eval().requires_grad_(False), diffusion, run_dir,
                                        classes, device),
                   seconds=state.get("seconds", 0.0), run_dir=run_dir, classes=classes, shipped=True)
    path = run_dir if run_dir.is_file() else run_dir / CHECKPOINT_NAME
    state = load_checkpoint(path, map_location=device)
    config = Config.from_dict(state["config"])
    model = build_model(config)
    load_weights(model, state["model"], path)
    ema_model = build_model(config)
    load_weights(ema_model, ema_state_dict(state), path, "EMA")  # AveragedModel's "module." copy, unwrapped
    classes = Classes.from_list(state["classes"]) if state.get("classes") else None
    diffusion = build_diffusion(config).to(device)
    ready = lambda net: as_cascade(config, net.to(device).eval().requires_grad_(False), diffusion, path.parent,  # noqa: E731
                                   classes, device)
    return Run(config=config, model=ready(model), ema_model=ready(ema_model), diffusion=diffusion, step=state["step"],
               seconds=state["seconds"], run_dir=path.parent, classes=classes)




def run_is_finished(config: Config) -> bool:
    """Whether the run folder of `config` holds a finished checkpoint of the same config (then nothing is trained)."""
    path = config.run_dir / CHECKPOINT_NAME
    if not path.exists():
        return False
    state = load_checkpoint(path, mmap=True)
    same = not config_differences(Config.from_dict(state["config"]), config)
    return same and config.finished(state["step"], state["seconds"])
