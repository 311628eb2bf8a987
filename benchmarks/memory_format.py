"""channels_last on the CPU: does it make the `cpu` profile's training step and sampling faster?

    .venv/bin/python benchmarks/memory_format.py                     # the cpu profile, 5 rounds
    .venv/bin/python benchmarks/memory_format.py --rounds 3 --threads 1

On CUDA, TrainLoop and generate() put the network and its inputs in channels_last (NHWC); on the CPU they keep the
default layout (NCHW). This times both layouts on the CPU, with the package's own code: TrainLoop.train_step of the
profile's improved UNet (synthetic images, a temporary run folder), and generate() with DDIM. The two layouts take
turns within each round, so a machine that slows down mid-run slows both; the figure to read is the median ratio.
Run it on a quiet machine: another torch process on the same cores changes the figures by 2-8x.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ddpm.config import PROFILES, get_config  # noqa: E402
from ddpm.data import ImageData  # noqa: E402
from ddpm.sample import generate  # noqa: E402
from ddpm.train import TrainLoop, build_model  # noqa: E402

LAYOUTS = {"NCHW": torch.contiguous_format, "channels_last": torch.channels_last}


class LayoutLoop(TrainLoop):
    """TrainLoop with the network and each batch in a given memory layout, as TrainLoop does on CUDA."""

    def __init__(self, config, data, memory_format):
        super().__init__(config, data=data, verbose=False)
        self.memory_format = memory_format
        # .to(memory_format) swaps each parameter's .data, so the optimiser keeps the same parameters
        self.model.to(memory_format=memory_format)

    def draw_batch(self):
        x0, t, noise, labels = super().draw_batch()
        layout = self.memory_format
        return x0.contiguous(memory_format=layout), t, noise.contiguous(memory_format=layout), labels


def layout_difference(config) -> float:
    """The largest difference between one forward pass in each layout, with random weights (a new network's last
    layers are zero, so it would output zeros in both)."""
    torch.manual_seed(0)
    nchw = build_model(config).eval()
    with torch.no_grad():
        for p in nchw.parameters():
            p.normal_(0, 0.05)
    nhwc = copy.deepcopy(nchw).to(memory_format=torch.channels_last)
    x, t = torch.randn(8, 3, config.resolution, config.resolution), torch.randint(0, config.timesteps, (8,))
    with torch.no_grad():
        return (nchw(x, t) - nhwc(x.contiguous(memory_format=torch.channels_last), t)).abs().max().item()


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def time_train(loop: TrainLoop, steps: int) -> float:
    """Images per second over `steps` train steps."""
    start = time.perf_counter()
    for _ in range(steps):
        loop.train_step()
    return steps * loop.config.batch_size / (time.perf_counter() - start)


def time_sample(loop: TrainLoop, memory_format, num_images: int, steps: int) -> float:
    """Images per second of DDIM with `steps` steps, one batch of `num_images`."""
    start = time.perf_counter()
    generate(loop.ema.module, loop.diffusion, num_images, batch_size=num_images, sampler="ddim", steps=steps,
             channels_last=memory_format is torch.channels_last, progress=False)
    return num_images / (time.perf_counter() - start)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="cpu", choices=sorted(PROFILES))
    p.add_argument("--rounds", type=int, default=5, help="rounds; each times both layouts")
    p.add_argument("--train-steps", type=int, default=20, help="timed train steps per layout and round")
    p.add_argument("--sample-images", type=int, default=64, help="images per sampling call (one batch)")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps per sampling call")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        config = get_config(args.profile, use_env=False, runs_dir=tmp, progress=False, device="cpu")
        r = config.resolution
        data = ImageData(torch.randint(0, 256, (512, 3, r, r), dtype=torch.uint8), [""] * 512, "synthetic",
                         "random uint8 images", None)
        loops = {name: LayoutLoop(config.replace(run_name=name), data, fmt) for name, fmt in LAYOUTS.items()}
        diff = layout_difference(config)
        for loop in loops.values():
            time_train(loop, 2)  # warm-up: allocator, oneDNN primitives
        train = {name: [] for name in LAYOUTS}
        sample = {name: [] for name in LAYOUTS}
        for _ in range(args.rounds):
            for name, fmt in LAYOUTS.items():
                train[name].append(time_train(loops[name], args.train_steps))
                sample[name].append(time_sample(loops[name], fmt, args.sample_images, args.sample_steps))

    print(f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch "
          f"{torch.__version__}; profile {args.profile} ({r}px, base {config.base_channels}, "
          f"batch {config.batch_size}); "
          f"{args.rounds} rounds")
    print(f"largest difference of one forward pass between layouts: {diff:.2e}")
    print("| what | NCHW img/s | channels_last img/s | channels_last / NCHW (median of rounds) |")
    print("|---|---|---|---|")
    for what, figures in (("train step", train), (f"DDIM-{args.sample_steps}, batch {args.sample_images}", sample)):
        ratios = [c / n for c, n in zip(figures["channels_last"], figures["NCHW"])]
        nchw, nhwc = statistics.median(figures["NCHW"]), statistics.median(figures["channels_last"])
        print(f"| {what} | {nchw:.1f} | {nhwc:.1f} "
              f"| {statistics.median(ratios):.3f} (range {min(ratios):.3f}-{max(ratios):.3f}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
