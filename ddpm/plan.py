"""The reference plan of a profile: every run solution.ipynb shows, and every FID/KID evaluation of its tables.

Declared here once, and used by three readers: ``python -m ddpm reproduce`` (trains and evaluates all of it ahead of the
notebook), ``python -m ddpm plan`` (its cost in FLOPs and minutes, ddpm/budget.py) and the notebook itself, which loads
what exists and makes only what is missing, with the same specs.

    plan = build_plan(get_config("gpu"))
    plan.runs["improved"].config        # the Config of the improved UNet's run (its folder: .config.run_dir)
    plan.evaluations[0]                 # EvalSpec(run="baseline", weights="ema", sampler="dpmpp2m", steps=20, ...)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ddpm.config import Config

# The other runs' caps, as fractions of the improved run's train_minutes. On the H200 (2026-11-30) the uncompiled
# baseline trained 12.8k images/s, about 4.4x the improved UNet's rate, so at 0.25 of its minutes it sees about as many
# images; the side and schedule runs (batch 64, uncompiled, cuDNN's autotuning in their first steps) train a few
# hundred steps in theirs. The caps add up to 1.47 x the improved run's: 5.6 minutes of training in all.
CAP_FRACTION = {"baseline": 0.25, "side": 0.08, "schedule": 0.03}
SIDE_BATCH = 64
SIDE_EMA_FRACTION = 0.05  # side runs: EMA half-life as a fraction of their length (in force from half way, rampup 0.1)
# The baseline UNet is the narrative's plain starting point, whatever recipe the profile's improved UNet uses: Ho et
# al.'s eps-prediction on uniform t with the plain MSE, unconditional, gradients clipped at 1 and no weight decay (the
# learning rate stays the profile's: it goes with the batch). The schedule runs train it the same way.
PLAIN_DDPM = dict(model="baseline", prediction="eps", noise_sampling="uniform", min_snr_gamma=None, num_classes=0,
                  ema2_half_life_kimg=None, grad_clip=1.0, weight_decay=0.0,
                  lowres=None, base=None, crop=None)  # nor a super-resolution stage


@dataclass(frozen=True)
class RunSpec:
    key: str  # the plan's name of the run: baseline, improved, pets, craters
    config: Config


@dataclass(frozen=True)
class EvalSpec:
    """One row of the FID/KID tables: sample `num_generated` images from a run and score them against `num_real` real
    images of its dataset (None: all of them)."""
    run: str  # a RunSpec key
    weights: str  # "ema" or "raw"
    sampler: str  # ddpm, ddim or dpmpp2m
    steps: int  # sampling steps (DDPM: all T)
    num_generated: int
    num_real: int | None
    headline: bool = False  # the rows scored on the full protocol (fid_samples)
    eta: float = 0.0  # DDIM only: 0 deterministic, 1 fresh noise at every step as in DDPM
    guidance_scale: float | None = None  # conditional runs only: classifier-free guidance (two network passes a step)

    @property
    def name(self) -> str:
        """The result's file stem in run_dir/metrics/: ddpm.evaluate.result_name of this evaluation."""
        from ddpm.evaluate import result_name

        return result_name({"weights": self.weights, "sampler": self.sampler, "steps": self.steps, "eta": self.eta,
                            "guidance_scale": self.guidance_scale, "num_generated": self.num_generated})

    @property
    def sampling(self) -> str:
        """e.g. `ema ddim-50 eta=1`."""
        eta = f" eta={self.eta:g}" if self.sampler == "ddim" else ""
        guidance = f" guidance={self.guidance_scale:g}" if self.guidance_scale is not None else ""
        return f"{self.weights} {self.sampler}-{self.steps}{eta}{guidance}"

    @property
    def label(self) -> str:
        return f"{self.run} {self.sampling}, {self.num_generated} generated"


@dataclass(frozen=True)
class Plan:
    profile: str
    config: Config  # the profile's config (with env overrides): the improved run's
    runs: dict[str, RunSpec]
    evaluations: tuple[EvalSpec, ...]
    floor: EvalSpec  # real flowers held out from the reference set, scored like generated ones (evaluate.real_floor)

    def run_config(self, key: str) -> Config:
        return self.runs[key].config

    def run_dir(self, key: str) -> Path:
        return self.runs[key].config.run_dir

    def result_path(self, spec: EvalSpec) -> Path:
        return self.run_dir(spec.run) / "metrics" / f"{spec.name}.json"

    def evaluations_of(self, *keys: str) -> list[EvalSpec]:
        return [spec for spec in self.evaluations if spec.run in keys]

    def reference_sets(self) -> list[tuple[str, int, str | None, int | None]]:
        """(dataset, resolution, split, num_real) of every set of real images the plan's evaluations and floor are
        scored against: the feature caches it reads (tools/ship_features.py ships them for a fresh clone)."""
        sets = [(c.dataset, c.resolution, c.split, e.num_real)
                for e in self.evaluations for c in [self.run_config(e.run)]]
        sets.append((self.config.dataset, self.config.resolution, self.config.split, self.floor.num_real))
        return list(dict.fromkeys(sets))

    @property
    def protocol(self) -> str:
        cfg = self.config
        return (f"{cfg.fid_samples} generated images for the headline rows, {cfg.fid_compare_samples} for the others, "
                f"against {cfg.fid_real or 'all'} real images of the run's dataset, at {cfg.resolution}px")

    def describe(self) -> list[dict]:
        """The plan as table rows, for the notebook and the CLI."""
        rows = [{"phase": "train", "run": s.key, "run folder": s.config.name, "dataset": s.config.dataset,
                 "network or sampling": s.config.model, "size": f"{s.config.total_steps} steps of {s.config.batch_size}",
                 "note": f"cap {s.config.train_minutes:g} min" if s.config.train_minutes else ""}
                for s in self.runs.values()]
        rows += [{"phase": "evaluate", "run": e.run, "run folder": self.runs[e.run].config.name,
                  "dataset": self.runs[e.run].config.dataset, "network or sampling": e.sampling,
                  "size": f"{e.num_generated} vs {e.num_real or 'all'} real", "note": "headline" if e.headline else ""}
                 for e in self.evaluations]
        rows.append({"phase": "evaluate", "run": "real images", "run folder": "", "dataset": self.config.dataset,
                     "network or sampling": "held-out real images (the floor)",
                     "size": f"{self.floor.num_generated} vs {self.floor.num_real or 'all'} real", "note": "floor"})
        return rows


def side_run(cfg: Config, cap: str = "side", **changes) -> Config:
    """A side run (pets, craters): the improved recipe on another dataset, side_kimg long. A batch of at most 64 gives
    the short run more optimiser steps, with a warm-up of a tenth of them and an EMA half-life in force for its second
    half. Not compiled: at this length compiling would cost about as much as it saves. Unconditional, whatever the
    profile: the side runs compare datasets, and the craters have a single label."""
    batch = min(cfg.batch_size, SIDE_BATCH)
    steps = math.ceil(cfg.side_kimg * 1000 / batch)
    minutes = cfg.train_minutes and cfg.train_minutes * CAP_FRACTION[cap]
    return cfg.replace(train_steps=None, train_kimg=cfg.side_kimg, train_minutes=minutes, batch_size=batch,
                       warmup_steps=min(cfg.warmup_steps, max(steps // 10, 1)), compile=False,
                       ema_half_life_kimg=cfg.side_kimg * SIDE_EMA_FRACTION,
                       **{"num_classes": 0, "ema2_half_life_kimg": None, **changes})


def schedule_run(cfg: Config, schedule: str) -> Config:
    """A short run of the small network (the baseline UNet, side-run length) trained with the noise `schedule`:
    the two of them compare the linear and cosine schedules where it matters, in training."""
    return side_run(cfg, "schedule", **PLAIN_DDPM, schedule=schedule,
                    run_name=f"{cfg.profile}-schedule-{schedule}-{cfg.dataset}-{cfg.resolution}px")


def build_plan(cfg: Config) -> Plan:
    """The runs and evaluations of the profile of `cfg`. Every length and count comes from `cfg`, so the profiles
    (ddpm/config.py) and DDPM_<FIELD> overrides size the plan; its shape is the same for all of them."""
    baseline_cap = cfg.train_minutes and cfg.train_minutes * CAP_FRACTION["baseline"]
    runs = [
        # Same widths, length and learning rate as the improved run; Ho et al.'s linear schedule and plain loss
        RunSpec("baseline", cfg.replace(**PLAIN_DDPM, schedule="linear", train_minutes=baseline_cap)),
        RunSpec("improved", cfg),
        RunSpec("pets", side_run(cfg, dataset="pets")),  # the partial Oxford-IIIT Pets (975 images)
        RunSpec("craters", side_run(cfg, dataset="craters", split="train")),  # 98 training images
        RunSpec("linear", schedule_run(cfg, "linear")),
        RunSpec("cosine", schedule_run(cfg, "cosine")),
    ]
    solver, head, compare, real = ("dpmpp2m", cfg.solver_steps), cfg.fid_samples, cfg.fid_compare_samples, cfg.fid_real
    ddim = ("ddim", cfg.solver_steps)  # as many network calls as the solver: the samplers compare at equal cost
    # A conditional improved run is scored at its guidance scale, with labels drawn with the data's frequencies (so
    # that its rows compare with the unconditional runs'); the other runs are unconditional.
    guide = cfg.sampling_guidance

    def improved(weights: str, sampler: str, steps: int, num: int, **kw) -> EvalSpec:
        return EvalSpec("improved", weights, sampler, steps, num, real, guidance_scale=guide, **kw)

    # DDPM costs T network calls an image: fid_ddpm_samples = 0 leaves its row out (the cpu profile)
    ddpm_row = improved("ema", "ddpm", cfg.timesteps, cfg.fid_ddpm_samples)
    evaluations = [
        # The headline rows, on the full protocol: baseline vs improved, both with the few-step solver
        EvalSpec("baseline", "ema", *solver, head, real, headline=True),
        improved("ema", *solver, head, headline=True),
        # Comparisons on fewer images, all with the same number so that they compare: the samplers (DDIM with and
        # without fresh noise at the same steps), EMA vs raw weights, the schedules
        improved("ema", *solver, compare),
        improved("ema", *ddim, compare),
        improved("ema", *ddim, compare, eta=1.0),
        *([ddpm_row] if cfg.fid_ddpm_samples else []),
        improved("raw", *solver, compare),
        EvalSpec("linear", "ema", *solver, compare, real),
        EvalSpec("cosine", "ema", *solver, compare, real),
        # The side runs (975 pets, 98 craters: fid_real >= that many means all of them)
        EvalSpec("pets", "ema", *solver, compare, real),
        EvalSpec("craters", "ema", *solver, compare, real),
    ]
    # With fid_samples == fid_compare_samples (CPU profiles) a comparison row is a headline row: keep it once
    unique: dict[tuple, EvalSpec] = {}
    for e in evaluations:
        unique.setdefault((e.run, e.name, e.num_real), e)
    floor = EvalSpec("real", "", "real", 0, compare, real)  # the comparison rows' floor (and the headline's on a CPU)
    return Plan(cfg.profile, cfg, {spec.key: spec for spec in runs}, tuple(unique.values()), floor)
