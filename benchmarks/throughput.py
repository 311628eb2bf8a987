"""Training and sampling throughput of our two networks against diffusers' UNet2DModel at a matched parameter count.

    python benchmarks/throughput.py                                   # profile from the hardware (gpu / cpu)
    python benchmarks/throughput.py --profile cpu --steps 5 --warmup 1
    python benchmarks/throughput.py --profile gpu --json outputs/throughput.json

For each network (BaselineUNet, our improved UNet, diffusers' UNet2DModel sized to within 10% of our UNet's
parameters) it times:
  train   TrainLoop.train_step of ddpm/train.py itself, on a real TrainLoop built from the profile (synthetic uint8
          images, a temporary run folder): batch draw, bf16 autocast (CUDA) and channels_last, training_loss, backward,
          grad clipping, fused AdamW, LR scheduler, EMA; torch.compile of the training model on CUDA (default on).
  sample  ddpm.sample.generate with DDIM (eager model, bf16 autocast on CUDA), reported as images/s of a full DDIM-50
          run; when fewer steps are timed (the CPU default) the figure is extrapolated and marked with "*".
It also counts the FLOPs of one training step (forward + backward, torch.utils.flop_counter) and reports the model
FLOPs utilisation against the GPU's bf16 dense peak on CUDA; on CPU it reports the achieved GFLOP/s only.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from unittest import mock

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing the package

import ddpm.train  # noqa: E402
from ddpm.config import PROFILES, Config, default_profile, get_config  # noqa: E402
from ddpm.data import ImageData  # noqa: E402
from ddpm.diffusion import GaussianDiffusion  # noqa: E402
from ddpm.distributed import resolve_device  # noqa: E402
from ddpm.sample import generate  # noqa: E402
from ddpm.train import TrainLoop, build_model  # noqa: E402

MODELS = ("baseline", "unet", "diffusers")
REFERENCE_DDIM_STEPS = 50  # the sampling figure is always for a full DDIM-50 run
MATCH_TOLERANCE = 0.10  # diffusers' parameter count must be within 10% of our UNet's

# bf16 dense (no sparsity) peak in TFLOP/s, matched in order on torch.cuda.get_device_name() (all substrings, upper
# case). H100 NVL and other unlisted parts fall through to "unknown" rather than borrowing a wrong peak.
BF16_PEAK_TFLOPS: list[tuple[tuple[str, ...], float]] = [
    (("H100", "PCIE"), 756.0),
    (("H100", "HBM3"), 989.0),  # "NVIDIA H100 80GB HBM3" is the SXM part
    (("H100", "SXM"), 989.0),
    (("H200",), 989.0),
    (("A100",), 312.0),
]


def bf16_peak_tflops(device_name: str) -> float | None:
    name = device_name.upper()
    for needles, peak in BF16_PEAK_TFLOPS:
        if all(n in name for n in needles):
            return peak
    return None


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------------------------------------------------
# diffusers' UNet2DModel, sized to our UNet
class DiffusersAdapter(nn.Module):
    """Call a diffusers UNet2DModel as ``model(x, t) -> prediction`` (its forward returns an output object)."""

    def __init__(self, net: nn.Module, image_size: int):
        super().__init__()
        self.net = net
        self.image_size = image_size  # ddpm.sample.generate reads it

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(x, t).sample


def mirror_diffusers_config(config: Config, base_channels: int | None = None, layers_per_block: int | None = None) -> dict:
    """UNet2DModel kwargs with our UNet's layout: widths base x mult, res blocks per level, attention (64-channel
    heads) at the same resolutions, dropout; a norm group count that divides every width. Defaults mirror ``config``."""
    base = base_channels or config.base_channels
    widths = tuple(base * m for m in config.channel_mult)
    resolutions = [config.resolution // 2**i for i in range(len(widths))]
    attention = [r in config.attention_resolutions for r in resolutions]
    attended = [w for w, a in zip(widths, attention) if a] + [widths[-1]]  # + the middle block's attention
    return dict(
        sample_size=config.resolution,
        in_channels=3,
        out_channels=3,
        block_out_channels=widths,
        layers_per_block=layers_per_block or config.num_res_blocks,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        attention_head_dim=min(64, *attended),
        norm_num_groups=math.gcd(32, max(1, base // 4)),
        dropout=config.dropout,
        resnet_time_scale_shift="scale_shift" if config.scale_shift_norm else "default",  # AdaGN, as ours
    )


def import_unet2d():
    try:
        from diffusers import UNet2DModel
    except ImportError as error:
        raise SystemExit(
            f"benchmarks/throughput.py: --models diffusers needs the diffusers package ({error}); "
            "pip install diffusers, or leave it out of --models"
        ) from None
    return UNet2DModel


def count_diffusers_parameters(kwargs: dict) -> int:
    with torch.device("meta"):  # no memory, no init cost
        return sum(p.numel() for p in import_unet2d()(**kwargs).parameters())


@dataclass
class DiffusersMatch:
    kwargs: dict
    params: int
    target_params: int
    how: str  # "mirror" (our layout as is) or "searched"

    @property
    def relative_difference(self) -> float:
        return (self.params - self.target_params) / self.target_params


def match_diffusers(config: Config) -> DiffusersMatch:
    """Our UNet's layout mirrored in UNet2DModel; if that misses by more than 10%, the closest width/depth in a grid."""
    target = sum(p.numel() for p in build_model(config.replace(model="unet", num_classes=0)).parameters())
    kwargs = mirror_diffusers_config(config)
    match = DiffusersMatch(kwargs, count_diffusers_parameters(kwargs), target, "mirror")
    if abs(match.relative_difference) <= MATCH_TOLERANCE:
        return match
    for base in range(max(8, config.base_channels // 2 // 8 * 8), 2 * config.base_channels + 1, 8):
        for layers in (1, 2, 3, 4):
            kwargs = mirror_diffusers_config(config, base, layers)
            candidate = DiffusersMatch(kwargs, count_diffusers_parameters(kwargs), target, "searched")
            if abs(candidate.relative_difference) < abs(match.relative_difference):
                match = candidate
    return match


# ----------------------------------------------------------------------------------------------------------------------
# Timing
SYNTHETIC_IMAGES = 1024  # random uint8 images: their content does not change the cost of a step


def synthetic_data(resolution: int, seed: int = 0) -> ImageData:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (SYNTHETIC_IMAGES, 3, resolution, resolution), dtype=torch.uint8, generator=generator)
    return ImageData(images=images, labels=[""] * SYNTHETIC_IMAGES, name="synthetic", source="random uint8 images",
                     sha256=None)


def build_loop(name: str, config: Config, runs_dir: str | Path, match: DiffusersMatch | None = None) -> TrainLoop:
    """A real TrainLoop training network `name` on synthetic images, its run folder under `runs_dir`.

    For diffusers, TrainLoop is built from the unet config with ddpm.train.build_model patched to return the
    UNet2DModel: TrainLoop.__init__ itself then sets up channels_last, the EMA, fused AdamW, the scheduler and compile."""
    # unconditional: synthetic images have no labels, and a label embedding costs nothing measurable
    config = config.replace(model="unet" if name == "diffusers" else name, runs_dir=str(runs_dir),
                            run_name=f"throughput-{name}", progress=False, num_classes=0)
    data = synthetic_data(config.resolution, config.seed)
    if name != "diffusers":
        return TrainLoop(config, data=data, verbose=False)
    unet2d = import_unet2d()
    network = lambda cfg: DiffusersAdapter(unet2d(**match.kwargs), cfg.resolution)  # noqa: E731
    with mock.patch.object(ddpm.train, "build_model", network):
        loop = TrainLoop(config, data=data, verbose=False)
    if not isinstance(loop.model, DiffusersAdapter):
        raise RuntimeError("TrainLoop no longer builds its network with ddpm.train.build_model: update build_loop")
    return loop


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def attention_flop_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels, which flop_counter does not register (it does for CUDA's)."""
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten
    mapping = {}
    forward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    backward = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if forward is not None:
        mapping[forward] = lambda q, k, v, *args, out_shape=None, **kwargs: sdpa_flop_count(q, k, v)
    if backward is not None:
        mapping[backward] = lambda g, q, k, v, *args, out_shape=None, **kwargs: sdpa_backward_flop_count(g, q, k, v)
    return mapping


def count_train_step_flops(loop: TrainLoop) -> int:
    """FLOPs of one real loop.train_step() (its forward + backward; the optimiser, norms and activations are not in
    flop_counter's table). A compiled model runs this one step eagerly: FlopCounterMode sees aten ops, not the fused
    kernels torch.compile makes of them."""
    counter = FlopCounterMode(display=False, custom_mapping=attention_flop_formulas())
    train_model, loop.train_model = loop.train_model, loop.model
    try:
        with counter:
            loop.train_step()
    finally:
        loop.train_model = train_model
    return counter.get_total_flops()


def time_training(loop: TrainLoop, steps: int, warmup: int) -> tuple[float, int]:
    """(seconds for `steps` timed loop.train_step() calls, FLOPs of one step). The FLOPs are counted in the first
    warm-up step, or in one extra untimed step when there is none or the model is compiled (that step is eager)."""
    compiled = loop.train_model is not loop.model
    flops = count_train_step_flops(loop)
    for _ in range(warmup if compiled else max(warmup - 1, 0)):
        loop.train_step()
    synchronize(loop.device)
    start = time.perf_counter()
    for _ in range(steps):
        loop.train_step()
    synchronize(loop.device)
    return time.perf_counter() - start, flops


def time_sampling(model: nn.Module, diffusion: GaussianDiffusion, device: torch.device, *, batch: int, steps: int,
                  amp: bool) -> float:
    """Seconds for `steps` DDIM steps on a batch of `batch`, after one untimed DDIM-1 warm-up (same batch)."""
    options = dict(batch_size=batch, sampler="ddim", device=device, amp=amp, progress=False)
    generate(model, diffusion, batch, steps=1, **options)
    synchronize(device)
    start = time.perf_counter()
    generate(model, diffusion, batch, steps=steps, **options)
    synchronize(device)
    return time.perf_counter() - start


@dataclass
class Result:
    model: str
    params: int
    train_batch: int
    train_steps: int
    train_seconds: float
    train_images_per_s: float
    flops_per_train_step: int
    train_tflops_per_s: float
    mfu: float | None
    sample_batch: int
    sample_steps_timed: int
    sample_seconds: float
    sample_images_per_s_ddim50: float
    sample_extrapolated: bool
    ratio_train_vs_diffusers: float | None = None
    ratio_sample_vs_diffusers: float | None = None


def benchmark(name: str, config: Config, device: torch.device, args, match: DiffusersMatch | None,
              peak: float | None, runs_dir: str | Path) -> Result:
    loop = build_loop(name, config, runs_dir, match)
    params = sum(p.numel() for p in loop.model.parameters())
    train_seconds, flops = time_training(loop, args.steps, args.warmup)
    steps_per_s = args.steps / train_seconds
    tflops = flops * steps_per_s / 1e12
    model, diffusion = loop.model, loop.diffusion
    del loop  # free the optimiser state, EMA copy and images before sampling
    sample_seconds = time_sampling(
        model, diffusion, device, batch=args.sample_batch, steps=args.sample_steps, amp=args.amp and device.type == "cuda",
    )
    seconds_ddim50 = sample_seconds / args.sample_steps * REFERENCE_DDIM_STEPS
    result = Result(
        model=name, params=params, train_batch=config.batch_size, train_steps=args.steps, train_seconds=train_seconds,
        train_images_per_s=config.batch_size * steps_per_s, flops_per_train_step=flops, train_tflops_per_s=tflops,
        mfu=tflops / peak if peak else None, sample_batch=args.sample_batch, sample_steps_timed=args.sample_steps,
        sample_seconds=sample_seconds, sample_images_per_s_ddim50=args.sample_batch / seconds_ddim50,
        sample_extrapolated=args.sample_steps != REFERENCE_DDIM_STEPS,
    )
    del model, diffusion
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


# ----------------------------------------------------------------------------------------------------------------------
# Command line
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default=None, choices=sorted(PROFILES),
                        help="ddpm.config profile: resolution, batch size and network widths (default: gpu with CUDA, "
                             "cpu without, or DDPM_PROFILE)")
    parser.add_argument("--resolution", type=int, help="image size in pixels (default: the profile's)")
    parser.add_argument("--batch-size", type=int, help="training batch (default: the profile's)")
    parser.add_argument("--steps", type=int, help="timed training steps (default 50 on CUDA, 10 on CPU)")
    parser.add_argument("--warmup", type=int, help="untimed training steps first (default 10 on CUDA, 2 on CPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the training model (CUDA only; default on with CUDA)")
    parser.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True,
                        help="bf16 autocast on CUDA (default on; no effect on CPU)")
    parser.add_argument("--sample-batch", type=int, help="images per sampling batch (default 256 on CUDA, 32 on CPU)")
    parser.add_argument("--sample-steps", type=int,
                        help=f"DDIM steps actually timed (default {REFERENCE_DDIM_STEPS} on CUDA, 10 on CPU); the "
                             f"figure is for DDIM-{REFERENCE_DDIM_STEPS}, extrapolated when this differs")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, help="which networks to time")
    parser.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    if args.compile and not cuda:
        parser.error("--compile is CUDA only (torch.compile on CPU is not what training uses); drop it or use --device cuda")
    args.compile = cuda if args.compile is None else args.compile
    defaults = dict(steps=50, warmup=10, sample_batch=256, sample_steps=REFERENCE_DDIM_STEPS) if cuda else \
        dict(steps=10, warmup=2, sample_batch=32, sample_steps=10)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for key in ("steps", "sample_batch", "sample_steps", "batch_size", "resolution"):
        value = getattr(args, key)
        if value is not None and value < 1:
            parser.error(f"--{key.replace('_', '-')} must be at least 1, got {value}")
    if args.warmup < 0:
        parser.error(f"--warmup must be 0 or more, got {args.warmup}")
    return args


def fmt_rate(value: float) -> str:
    """Three significant figures for small rates (CPU), plain thousands for large ones (GPU)."""
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(results: list[Result], device: torch.device) -> None:
    cuda = device.type == "cuda"
    header = ["model", "params", "train img/s", f"sample img/s (DDIM-{REFERENCE_DDIM_STEPS})",
              "ratio vs diffusers (train / sample)", "train TFLOP/s" if cuda else "train GFLOP/s"]
    if cuda:
        header.append("MFU (bf16 peak)")
    rows = []
    for r in results:
        star = "*" if r.sample_extrapolated else ""
        row = [r.model, f"{r.params / 1e6:.2f}M", fmt_rate(r.train_images_per_s), fmt_rate(r.sample_images_per_s_ddim50) + star,
               f"{fmt_ratio(r.ratio_train_vs_diffusers)} / {fmt_ratio(r.ratio_sample_vs_diffusers)}",
               fmt_rate(r.train_tflops_per_s if cuda else r.train_tflops_per_s * 1e3)]
        if cuda:
            row.append("-" if r.mfu is None else f"{100 * r.mfu:.1f}%")
        rows.append(row)
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    print(line(header))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print(line(row))
    if any(r.sample_extrapolated for r in results):
        timed = results[0].sample_steps_timed
        print(f"* extrapolated to DDIM-{REFERENCE_DDIM_STEPS} from {timed} timed DDIM steps (per-step cost x "
              f"{REFERENCE_DDIM_STEPS}); ratio = ours / diffusers")
    else:
        print("ratio = ours / diffusers")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    overrides = {k: v for k, v in dict(resolution=args.resolution, batch_size=args.batch_size).items() if v is not None}
    config = get_config(args.profile or default_profile(), **overrides, device=str(device), compile=args.compile,
                        amp=args.amp)
    cuda = device.type == "cuda"

    device_name = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()} ({os.cpu_count()} logical CPUs, " \
                                                                  f"{torch.get_num_threads()} torch threads)"
    peak = bf16_peak_tflops(device_name) if cuda else None
    diffusers_version = package_version("diffusers")

    print(f"device: {device} - {device_name}")
    print(f"torch {torch.__version__}, diffusers {diffusers_version}, python {platform.python_version()}")
    if cuda:
        print("bf16 dense peak: " + (f"{peak:.0f} TFLOP/s" if peak else "unknown for this GPU (FLOP/s only, no MFU)"))
    print(f"profile {config.profile}: {config.resolution}px, base_channels {config.base_channels}, channel_mult "
          f"{config.channel_mult}, num_res_blocks {config.num_res_blocks}, attention at {config.attention_resolutions}, "
          f"dropout {config.dropout}")
    print(f"train: batch {config.batch_size}, {args.warmup} warm-up + {args.steps} timed steps, amp "
          f"{'bf16' if args.amp and cuda else 'off'}, compile {'on' if args.compile else 'off'}, channels_last "
          f"{'on' if config.channels_last else 'off'}; sample: batch {args.sample_batch}, "
          f"{args.sample_steps} timed DDIM steps")

    match = None
    if "diffusers" in args.models:
        match = match_diffusers(config)
        shown = {k: v for k, v in match.kwargs.items() if k not in ("in_channels", "out_channels")}
        print(f"diffusers UNet2DModel ({match.how}): {shown}")
        print(f"parameters: ours (unet) {match.target_params:,} vs diffusers {match.params:,} "
              f"({100 * match.relative_difference:+.2f}%)")
        if abs(match.relative_difference) > MATCH_TOLERANCE:
            print(f"error: no UNet2DModel config within {100 * MATCH_TOLERANCE:.0f}% of our UNet's parameter count",
                  file=sys.stderr)
            return 1
    if args.compile and args.warmup < 3:
        print(f"note: --warmup {args.warmup} with torch.compile: recompilations may land in the timed steps")
    print(flush=True)

    results = []
    with tempfile.TemporaryDirectory(prefix="ddpm-throughput-") as runs_dir:  # TrainLoop's run folders
        for name in [m for m in MODELS if m in args.models]:
            result = benchmark(name, config, device, args, match, peak, runs_dir)
            print(f"  {name}: train {fmt_rate(result.train_images_per_s)} img/s ({result.train_seconds:.2f} s for "
                  f"{args.steps} steps), sample {fmt_rate(result.sample_images_per_s_ddim50)} img/s at DDIM-"
                  f"{REFERENCE_DDIM_STEPS} ({result.sample_seconds:.2f} s for {args.sample_steps} steps), "
                  f"{result.flops_per_train_step / 1e9:,.1f} GFLOP per training step", flush=True)
            results.append(result)

    reference = next((r for r in results if r.model == "diffusers"), None)
    if reference:
        for r in results:
            r.ratio_train_vs_diffusers = r.train_images_per_s / reference.train_images_per_s
            r.ratio_sample_vs_diffusers = r.sample_images_per_s_ddim50 / reference.sample_images_per_s_ddim50
    print()
    print_table(results, device)

    if args.json:
        record = {
            "device": str(device), "device_name": device_name, "torch": torch.__version__,
            "diffusers": diffusers_version, "bf16_peak_tflops": peak, "profile": config.profile,
            "config": config.to_dict(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "diffusers_match": None if match is None else {
                "how": match.how, "kwargs": match.kwargs, "params": match.params, "target_params": match.target_params,
                "relative_difference": match.relative_difference},
            "reference_ddim_steps": REFERENCE_DDIM_STEPS,
            "results": [asdict(r) for r in results],
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
