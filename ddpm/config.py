"""One explicit training config, named profiles, and overrides from environment variables or CLI flags.

A profile fixes everything a run needs; any field can then be overridden, e.g. ``DDPM_BATCH_SIZE=16`` or
``python -m ddpm train --batch-size 16``. The profile itself comes from ``DDPM_PROFILE``, else follows the hardware:
``gpu`` when CUDA is available, ``cpu`` otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
MODELS = ("unet", "baseline")

# Fields that change how a run is watched or where it runs, not what it computes: a run may be resumed with other
# values of these.
RUNTIME_FIELDS = frozenset(
    {"device", "compile", "log_every", "checkpoint_every", "sample_every", "snapshot_every_kimg", "runs_dir",
     "run_name", "progress", "figures_dir",
     # the length may grow (train a finished run for longer); the evaluation budget and the guidance scale of the
     # samples are not training
     "train_steps", "train_kimg", "sample_steps", "max_skipped_steps", "guidance_scale",
     # a time cap may be raised to train a capped run on; the plan's side-run length and evaluation budget are not
     # properties of one run
     "train_minutes", "side_kimg", "fid_samples", "fid_compare_samples", "fid_ddpm_samples", "fid_real",
     "fid_batch_size", "solver_steps"}
)


@dataclass(frozen=True)
class Config:
    profile: str = "gpu"
    # data
    dataset: str = "flowers102"
    split: str | None = None  # e.g. "train": only the images of that split (labels.csv of the bundled sets)
    resolution: int = 64
    limit_images: int | None = None  # train on the first N images only (overfitting checks)
    flip: bool = True
    # network
    model: str = "unet"  # "unet" (improved) or "baseline"
    base_channels: int = 128
    channel_mult: tuple[int, ...] = (1, 2, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: tuple[int, ...] = (16,)
    dropout: float = 0.1
    scale_shift_norm: bool = True  # AdaGN: t sets a scale and shift of each block's second GroupNorm (improved UNet)
    mid_attention: bool = True  # self-attention between the middle blocks (off: a fully convolutional network)
    # Class conditioning (improved UNet): a learned label embedding added to the time embedding, plus one null label
    # that training uses with probability label_dropout, so one network is both conditional and unconditional and can
    # be sampled with classifier-free guidance (Ho & Salimans 2022). 0 classes: an unconditional network.
    num_classes: int = 0
    label_dropout: float = 0.1
    # The classifier-free guidance scale a conditional run is sampled with unless told otherwise: its periodic grids,
    # the plan's evaluations and grids, `sample` and `fid` without --guidance-scale (None: 1, plain conditional).
    # Ignored by unconditional runs.
    guidance_scale: float | None = None
    # diffusion
    timesteps: int = 1000
    schedule: str = "linear"
    prediction: str = "eps"
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (Hang et al. 2023), e.g. 5; None: plain MSE
    # Which noise levels training draws: "uniform" t (Ho et al.), or "lognormal": EDM's log-normal density of sigma
    # with its loss weight (Karras et al. 2022), written over the discrete t (ddpm/diffusion.py).
    noise_sampling: str = "uniform"
    # Shift of the schedule's log-SNR, ln(alpha-bar / (1 - alpha-bar)) + shift at every t: simple diffusion
    # (Hoogeboom et al. 2023) lowers it by 2 ln(2) when the image side doubles, so that a 2x2 average of x_t has the
    # SNR a half-size image had at the same t
    log_snr_shift: float = 0.0
    # A new run whose network starts from the EMA weights of this shipped folder (ddpm/weights.py), trained at another
    # resolution (the same network: it is convolutional), at step 0; part of the config, so a resume checks it
    grow_from: str | None = None
    # Super-resolution stage of a cascade (Ho et al. 2021, ddpm/cascade.py): the network also sees the image at
    # `lowres` px, upsampled and concatenated to x_t, noised to an augmentation level it is told (uniform in
    # 0..aug_max_t while training; aug_t when sampling). `base`: the shipped folder that samples the low-resolution
    # images. `crop`: it trains on random crops of this size (None: whole images).
    lowres: int | None = None
    base: str | None = None
    crop: int | None = None
    aug_max_t: int = 300
    aug_t: int = 100
    # optimisation
    batch_size: int = 128
    lr: float = 2e-4
    warmup_steps: int = 500
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    max_skipped_steps: int = 20  # steps in a row with non-finite gradients (skipped) after which training stops
    train_steps: int | None = None  # training length in steps ...
    train_kimg: float | None = 1000.0  # ... or in thousands of images seen (used when train_steps is None)
    # Wall-clock cap on training, in minutes (None: none). Training stops cleanly at the first log step past it,
    # checkpoints, and the run then counts as finished at the images it has seen.
    train_minutes: float | None = None
    ema_half_life_kimg: float = 50.0  # EMA as a half-life in images (EDM): independent of the batch size
    # Warm-up: the half-life is at most this fraction of the images seen so far, so the configured one is in force
    # after ema_half_life_kimg / ema_rampup kimg. Every profile gets there before the last quarter of its run.
    ema_rampup: float | None = 0.1
    # A second EMA with another half-life, tracked beside the first (same ramp-up) and kept in the checkpoint as
    # "ema2", so that two half-lives can be compared from one run instead of two (None: none).
    ema2_half_life_kimg: float | None = None
    seed: int = 0
    # speed
    amp: bool = True  # bf16 autocast (CUDA only)
    # NHWC memory format for the network and its batches: faster on CUDA, and on a 2-core CPU too (training 9%,
    # sampling 23% with the cpu profile: benchmarks/memory_format.py)
    channels_last: bool = True
    compile: bool = False  # torch.compile of the training network (on in the gpu profiles)
    # bookkeeping
    device: str = "auto"
    log_every: int = 100
    checkpoint_every: int = 2000
    sample_every: int = 5000
    # An EMA snapshot every this many thousand images (None: none), as a shipped-weights folder in the run folder's
    # snapshots/ (ddpm/weights.py): `fid --checkpoint` scores each one later, for a curve of quality against images.
    snapshot_every_kimg: float | None = None
    sample_steps: int = 50  # DDIM steps for the periodic sample grids
    runs_dir: str = "runs"
    run_name: str | None = None
    figures_dir: str = "figures"  # the notebook writes its figures to <figures_dir>/<profile>/
    progress: bool = True
    # The reference plan of this profile (ddpm/plan.py): the length of the side runs, and the evaluation budget
    side_kimg: float = 60.0  # thousands of images each side run (pets, craters) trains on
    fid_samples: int = 8189  # generated images of the headline FID/KID rows (baseline and improved, EMA, solver)
    fid_compare_samples: int = 1024  # ... of every other row: samplers, raw weights, schedules, pets and craters
    fid_ddpm_samples: int = 1024  # ... of the DDPM row (all T steps: T network calls an image); 0 leaves it out
    fid_real: int | None = None  # real images to compare with (None: the whole dataset)
    fid_batch_size: int = 256
    solver_steps: int = 20  # steps of the few-step solver (DPM-Solver++(2M)) in the evaluations

    # ------------------------------------------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model must be one of {MODELS}, got {self.model!r}")
        if self.train_steps is None and self.train_kimg is None:
            raise ValueError("set train_steps or train_kimg: the run needs a length")
        for name in ("resolution", "batch_size", "timesteps", "base_channels", "log_every", "checkpoint_every",
                     "max_skipped_steps"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("train_minutes", "side_kimg", "ema2_half_life_kimg", "snapshot_every_kimg"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive (or None), got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be 0 (unconditional) or the number of labels, got {self.num_classes}")
        if self.num_classes and self.model == "baseline":
            raise ValueError("num_classes: the baseline UNet is unconditional; class conditioning needs model='unet'")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        self._check_stage()
        if self.fid_ddpm_samples == 1 or self.fid_ddpm_samples < 0:
            raise ValueError(f"fid_ddpm_samples must be 0 (no DDPM row) or at least 2, got {self.fid_ddpm_samples}")
        for name in ("fid_samples", "fid_compare_samples", "solver_steps"):
            if getattr(self, name) < (2 if name.startswith("fid") else 1):
                raise ValueError(f"{name} must be at least {2 if name.startswith('fid') else 1}, got {getattr(self, name)}")

    def _check_stage(self) -> None:
        """A super-resolution stage's fields: a lower resolution that divides this one, a crop the network can halve."""
        if self.lowres is None:
            for name in ("base", "crop"):
                if getattr(self, name) is not None:
                    raise ValueError(f"{name} belongs to a super-resolution stage: set lowres (e.g. 32) too")
            return
        if self.model != "unet":
            raise ValueError("lowres: a super-resolution stage needs model='unet'")
        if not 0 < self.lowres < self.resolution or self.resolution % self.lowres:
            raise ValueError(f"lowres must be below resolution={self.resolution} and divide it, got {self.lowres}")
        if not 0 <= self.aug_t <= self.aug_max_t < self.timesteps:
            raise ValueError(f"need 0 <= aug_t <= aug_max_t < timesteps={self.timesteps}, got aug_t={self.aug_t}, "
                             f"aug_max_t={self.aug_max_t}")
        halvings = 2 ** (len(self.channel_mult) - 1)
        if self.crop is not None and (not 0 < self.crop <= self.resolution or self.crop % halvings):
            raise ValueError(f"crop must be at most resolution={self.resolution} and a multiple of {halvings} "
                             f"(channel_mult={self.channel_mult}), got {self.crop}")
        if self.crop is not None and self.crop < self.resolution and (self.mid_attention or self.attention_resolutions):
            raise ValueError("crop: a network trained on crops must be fully convolutional (mid_attention=False, no "
                             "attention_resolutions): attention would see fewer pixels than at sampling")

    @property
    def train_resolution(self) -> int:
        """The side of the training images: the crop of a super-resolution stage, else the resolution."""
        return self.crop or self.resolution

    @property
    def total_steps(self) -> int:
        if self.train_steps is not None:
            return self.train_steps
        return math.ceil(self.train_kimg * 1000 / self.batch_size)

    def finished(self, step: int, seconds: float) -> bool:
        """Whether a run of this config that reached `step` after `seconds` of training is done: it trained all its
        steps, or it stopped at the time cap (train_minutes)."""
        return step >= self.total_steps or self.time_is_up(seconds)

    def time_is_up(self, seconds: float) -> bool:
        return self.train_minutes is not None and seconds >= self.train_minutes * 60

    @property
    def ema_full_after_kimg(self) -> float:
        """Images (in thousands) after which the EMA ramp-up ends and the configured half-life is in force."""
        return 0.0 if self.ema_rampup is None else self.ema_half_life_kimg / self.ema_rampup

    @property
    def name(self) -> str:
        """A descriptive run-folder name, e.g. ``cpu-unet-flowers102-32px``."""
        if self.run_name:
            return self.run_name
        dataset = self.dataset.replace(":", "-").replace("/", "_").strip("-_.")
        return f"{self.profile}-{self.model}-{dataset}-{self.resolution}px"

    @property
    def run_dir(self) -> Path:
        return resolve_path(self.runs_dir) / self.name

    @property
    def figures(self) -> Path:
        """Where this profile's figures go: figures/<profile>/ (never the working directory)."""
        return resolve_path(self.figures_dir) / self.profile

    @property
    def sampling_guidance(self) -> float | None:
        """The guidance scale this config's samples get by default: guidance_scale (1 if unset) for a conditional
        network, None for an unconditional one."""
        if not self.num_classes:
            return None
        return 1.0 if self.guidance_scale is None else self.guidance_scale

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config fields {unknown}; known fields: {sorted(known)}")
        return cls(**{k: parse_field(k, v) for k, v in values.items()})

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Config":
        return cls.from_dict(json.loads(Path(path).read_text()))


def display_path(path: Path) -> str:
    """A path as messages show it: relative to the repository when inside it (notebook outputs stay machine-free)."""
    path = Path(path)
    return str(path.relative_to(REPO_ROOT)) if path.is_absolute() and path.is_relative_to(REPO_ROOT) else str(path)


def resolve_path(path: str) -> Path:
    """Relative paths are relative to the repository, not the working directory (notebook, CLI and tests agree)."""
    return Path(path) if Path(path).is_absolute() else REPO_ROOT / path


# Environment variables of the project that are not config fields.
NON_CONFIG_ENV = frozenset({"DDPM_PROFILE", "DDPM_OUTPUT_DIR", "DDPM_DATA_DIR"})


# ----------------------------------------------------------------------------------------------------------------------
# Profiles. Only the differences from the defaults above are listed.
PROFILES: dict[str, dict] = {
    # CPU, seconds: tests and the notebook's regression run (nbval).
    "smoke": dict(
        resolution=32, base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(16,),
        dropout=0.0, timesteps=100, batch_size=16, lr=1e-3, warmup_steps=10, train_steps=60, train_kimg=None,
        ema_half_life_kimg=0.05, log_every=10, checkpoint_every=30, sample_every=1000, sample_steps=10,
        side_kimg=0.24, fid_samples=16, fid_compare_samples=16, fid_ddpm_samples=16, fid_real=32, fid_batch_size=16,
        solver_steps=10,
    ),
    # A laptop (2 CPU cores): flower colours and rough shapes at 32 px. Measured on this project's 2-core dev machine:
    # the improved UNet (1.7M parameters) trained 1000 steps in 518 s (61.8 img/s, four periodic grids included);
    # attention only in the middle (8x8), since attention at 16x16 costs 45% more time per step on a CPU.
    # The recipe is the one benchmarks/recipe.py measured best at 100k images (benchmarks/README.md, "Recipe"): the
    # Keras DDIM example's optimiser (lr 1e-3, no clipping, weight decay 1e-4) with v-prediction on the cosine
    # schedule, class-conditional (102 species) and sampled with classifier-free guidance 4.
    "cpu": dict(
        resolution=32, base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2, attention_resolutions=(),
        dropout=0.0, batch_size=32, lr=1e-3, grad_clip=0.0, weight_decay=1e-4, prediction="v", schedule="cosine",
        num_classes=102, label_dropout=0.1, guidance_scale=4.0, warmup_steps=100, train_steps=1000, train_kimg=None,
        ema_half_life_kimg=2.0, log_every=25, checkpoint_every=250, sample_every=250, sample_steps=50,
        # 256 generated vs 1024 real images: the fewest that rank anything (the floor, real vs real, is in the notebook).
        # No DDPM row: 256 images x 1000 steps would take 20 min here; DDIM with eta = 1 shows what fresh noise does.
        side_kimg=8.0, fid_samples=256, fid_compare_samples=256, fid_ddpm_samples=0, fid_real=1024, fid_batch_size=64,
    ),
    # The reference plan on one H200 (ddpm/plan.py), fitted to 11 minutes at 35% MFU: `python -m ddpm plan --profile gpu`.
    # The improved UNet at base 64 with multipliers 1-2-4-4 (26.4M parameters, 17.8 GFLOP forward at 64 px: 2.6x
    # cheaper per image than Ho et al.'s CIFAR-10 widths), trained on 1.1M images (3.6 min at 35% MFU), capped at
    # 3.8 min. The cpu recipe (benchmarks/README.md, "Recipe"): v-prediction on the cosine schedule (made for 64 px:
    # Nichol & Dhariwal 2021), lr 1e-3 without clipping, weight decay 1e-4 (EDM trains CIFAR-10 at lr 1e-3 too),
    # class-conditional with label dropout 0.1 and guidance. The first H200 run (benchmarks/gpu-runs/2026-11-30-h200)
    # set the rest: torch.compile took 115 s before the first training step and each new sampling batch shape ~35 s,
    # and the compiled UNet then ran at 20% MFU, while the uncompiled baseline ran at 25%, so nothing is compiled here;
    # at lr 2e-4 with 500 warm-up steps, its 800 steps had barely left the warm-up (FID 184), hence lr 1e-3 and 200
    # steps; its raw weights beat the EMA (50k images is long for such a run), hence a half-life of 20k images. The
    # guidance scale of the headline is measured on the GPU by benchmarks/guidance.py (tools/gpu/run.sh); 2 until then.
    "gpu": dict(
        resolution=64, base_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_resolutions=(16,),
        dropout=0.1, batch_size=256, lr=1e-3, grad_clip=0.0, weight_decay=1e-4, warmup_steps=200, prediction="v",
        schedule="cosine", num_classes=102, label_dropout=0.1, guidance_scale=2.0, train_kimg=1100.0,
        train_minutes=3.8, ema_half_life_kimg=20.0, log_every=100, checkpoint_every=2000, sample_every=1000,
        # the DDPM row walks all 1000 steps with guidance: its 128 images cost more than any other row
        side_kimg=40.0, fid_samples=8189, fid_compare_samples=1024, fid_ddpm_samples=128, fid_batch_size=512,
        solver_steps=20,
    ),
    # For users with hours: the same network and plan, trained 10x longer and without a time cap.
    "gpu-long": dict(
        resolution=64, base_channels=64, channel_mult=(1, 2, 4, 4), num_res_blocks=2, attention_resolutions=(16,),
        dropout=0.1, batch_size=256, lr=2e-4, warmup_steps=1000, train_kimg=25000.0, prediction="v", schedule="cosine",
        num_classes=102, label_dropout=0.1, guidance_scale=2.0,
        ema_half_life_kimg=250.0, log_every=200, checkpoint_every=5000, sample_every=10000, compile=True,
        side_kimg=600.0, fid_samples=8189, fid_compare_samples=1024, fid_batch_size=512, solver_steps=20,
    ),
}

# The long CPU reference run (issue 23): the cpu profile's network and recipe, trained for hours on the 2-core machine
# (1.6M images is where the Keras DDIM example's flowers are good). Its EMA weights are shipped in weights/cpu-long/
# (python -m ddpm export), so readers sample them without training: `python -m ddpm train --profile cpu-long` remakes
# them. An EMA snapshot every 100k images (snapshots/) gives the curve of quality against images seen; the two EMAs
# (10k and 50k images) are compared along it, since the 2k of the short runs is tuned for 100k images.
PROFILES["cpu-long"] = dict(
    PROFILES["cpu"], train_steps=None, train_kimg=1600.0, ema_half_life_kimg=10.0, ema2_half_life_kimg=50.0,
    snapshot_every_kimg=100.0, log_every=100, checkpoint_every=500, sample_every=3125,
)


# 64 px from the two CPU cores (issue 30). Three routes, screened at equal training FLOPs by benchmarks/route64.py:
# - cpu64-scratch, the control: the cpu recipe with one more level (32 channels at 64 px), so the middle stays 8x8;
# - cpu64-grown: the 32 px network of weights/cpu-long fine-tuned at 64 px, its noise schedule shifted by
#   -2 ln(64/32) in log-SNR (simple diffusion, Hoogeboom et al. 2023), so a 2x2 average sees the noise it knew;
# - cpu64-sr: a 32 -> 64 super-resolution stage after weights/cpu-long (a cascade, Ho et al. 2021), trained on 32 px
#   crops with noise-conditioning augmentation; attention-free, so crops and whole images see the same network.
# train_kimg is the screen's: the same FLOPs for every route (route64.py counts them).
_CPU64 = dict(PROFILES["cpu"], resolution=64, train_steps=None, ema_half_life_kimg=5.0, log_every=50,
              checkpoint_every=250, sample_every=1000, sample_steps=25, fid_samples=512, fid_compare_samples=512,
              fid_real=None, guidance_scale=2.0)
PROFILES["cpu64-scratch"] = dict(_CPU64, channel_mult=(1, 1, 2, 2), train_kimg=72.0)
PROFILES["cpu64-grown"] = dict(_CPU64, log_snr_shift=-2 * math.log(2), grow_from="weights/cpu-long", warmup_steps=100,
                               train_kimg=47.0)
PROFILES["cpu64-sr"] = dict(_CPU64, lowres=32, crop=32, base="weights/cpu-long", mid_attention=False, train_kimg=180.0)

# The 64 px long run: the screen's winner (cpu64-grown: KID 0.021 against the cascade's 0.029 and scratch's 0.159 at
# 0.3 PFLOP, benchmarks/README.md) trained on. Its recipe stays the screen's (constant lr after warm-up, so the run can be
# lengthened); the EMA half-life grows to 10k images as cpu-long's, a second EMA of 50k beside it, and a snapshot every
# 50k images gives the curve of KID against images seen (benchmarks/long_run.py --profile cpu64).
PROFILES["cpu64"] = dict(PROFILES["cpu64-grown"], train_kimg=800.0, ema_half_life_kimg=10.0, ema2_half_life_kimg=50.0,
                         snapshot_every_kimg=50.0, log_every=100, checkpoint_every=500, sample_every=3125)


def default_profile() -> str:
    """``DDPM_PROFILE`` if set, else ``gpu`` with CUDA and ``cpu`` without."""
    profile = os.environ.get("DDPM_PROFILE", "").strip()
    if profile:
        return profile
    return "gpu" if torch.cuda.is_available() else "cpu"


def parse_field(name: str, value):
    """Turn a string (env var, CLI flag) or JSON value into the field's type; clear error naming the field if not."""
    hints = typing.get_type_hints(Config)
    if name not in hints:
        raise ValueError(f"unknown config field {name!r}; known fields: {sorted(hints)}")
    hint = hints[name]
    if not isinstance(value, str):
        return tuple(value) if isinstance(value, list) else value
    text = value.strip()
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional and text.lower() in ("", "none", "null"):
        return None
    base = next((a for a in args if a is not type(None)), hint) if args and typing.get_origin(hint) is not tuple else hint
    try:
        if typing.get_origin(base) is tuple or base is tuple:
            return tuple(int(v) for v in text.replace("(", "").replace(")", "").split(",") if v.strip())
        if base is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        return text
    except ValueError as error:
        raise ValueError(f"config field {name!r}: cannot read {value!r} as {hint} ({error})") from None


def env_overrides(environ=None) -> dict:
    """Every ``DDPM_<FIELD>`` variable (e.g. DDPM_BATCH_SIZE=16) as a field override."""
    environ = os.environ if environ is None else environ
    fields = {f.name for f in dataclasses.fields(Config)}
    overrides = {}
    for key, value in environ.items():
        if key.startswith("DDPM_") and key not in NON_CONFIG_ENV:
            name = key[len("DDPM_"):].lower()
            if name not in fields:
                raise ValueError(f"environment variable {key} names no config field; known fields: {sorted(fields)}")
            overrides[name] = parse_field(name, value)
    return overrides


def get_config(profile: str | None = None, *, use_env: bool = True, **overrides) -> Config:
    """The config of a profile (default: from the hardware / DDPM_PROFILE), then env overrides, then keyword ones."""
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(PROFILES)} (env DDPM_PROFILE)")
    values = dict(PROFILES[profile], profile=profile)
    env = env_overrides() if use_env else {}
    values.update(env)
    chosen = set(env) | set(overrides)  # the fields the caller set, not the profile
    values.update({k: parse_field(k, v) for k, v in overrides.items()})
    if values.get("model") == "baseline" and "num_classes" not in chosen:
        values["num_classes"] = 0  # the baseline is unconditional, whatever the profile's improved UNet is
    return Config(**values)
