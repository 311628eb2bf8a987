"""Carry out a profile's plan (ddpm/plan.py) ahead of the notebook, phase by phase.

    python -m ddpm reproduce --profile gpu          (make reproduce)

  train      every run of the plan: a finished run of the same config is kept, a partial one resumed
  evaluate   every FID/KID evaluation: a result for the run's current checkpoint is kept
  notebook   solution.ipynb executed headless into outputs/solution.<profile>.ipynb; it loads what the phases above
             made, and reproduce checks that it made nothing again. Kept when it was executed on the same plan,
             the same runs and results and the same notebook source.
  results    figures/<profile>/results.md and results.json, then the README's results block

The notebook calls make_run and make_evaluation too: run on its own, it makes what is missing with the same specs.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from ddpm.checkpoint import CHECKPOINT_NAME, load_checkpoint
from ddpm.files import atomic_write_text
from ddpm.config import REPO_ROOT, display_path, get_config
from ddpm.plan import EvalSpec, Plan, build_plan

PHASES = ("train", "evaluate", "notebook", "results")
NOTEBOOK = REPO_ROOT / "solution.ipynb"


class NotebookFailed(RuntimeError):
    """A cell of the notebook raised, or the notebook made again what the plan had made (the message says which)."""


# ----------------------------------------------------------------------------------------------------------------------
# What the plan declares, made or loaded
def make_run(plan: Plan, key: str, *, device=None, verbose: bool = True):
    """The run `key` of the plan, loaded: trained first if it is not finished (ddpm.train.train_or_load)."""
    from ddpm.train import train_or_load

    return train_or_load(plan.run_config(key), device=device, verbose=verbose)


def stored_result(plan: Plan, spec: EvalSpec, feature=None) -> dict | None:
    """The result of an evaluation, if one was stored for the run's current checkpoint with the same real images
    and feature network; else None."""
    from ddpm.metrics import InceptionFeatures, feature_network_name
    from ddpm.evaluate import samples_path

    path = plan.result_path(spec)
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): delete it to evaluate again") from None
    checkpoint = plan.run_dir(spec.run) / CHECKPOINT_NAME
    same = (
        checkpoint.is_file()
        and samples_path(path).is_file()
        and result.get("step") == load_checkpoint(checkpoint, mmap=True)["step"]
        and result.get("num_real_requested", "missing") == spec.num_real
        and result.get("feature_network") == feature_network_name(feature or InceptionFeatures())
    )
    return {**result, "run": plan.run_dir(spec.run).name} if same else None


def make_evaluation(plan: Plan, spec: EvalSpec, *, device=None, feature=None, progress: bool = False) -> dict:
    """The result of an evaluation of the plan: the stored one, else computed now (ddpm.evaluate.evaluate_run)."""
    from ddpm.evaluate import evaluate_run

    result = stored_result(plan, spec, feature)
    if result is not None:
        return result
    cfg = plan.run_config(spec.run)
    return evaluate_run(cfg.run_dir, num_samples=spec.num_generated, num_real=spec.num_real, sampler=spec.sampler,
                        steps=spec.steps, eta=spec.eta, use_ema=spec.weights == "ema", batch_size=cfg.fid_batch_size,
                        device=device, feature=feature, progress=progress, guidance_scale=spec.guidance_scale)


def evaluation_samples(plan: Plan, spec: EvalSpec, *, device=None) -> dict:
    """The first images of an evaluation and their Inception features ({"images": uint8, "features": float32}),
    stored beside its result: the notebook shows and searches them without sampling again. The evaluation is made
    first if it is missing (make_evaluation)."""
    import torch

    from ddpm.evaluate import samples_path

    make_evaluation(plan, spec, device=device)
    return torch.load(samples_path(plan.result_path(spec)), map_location="cpu", weights_only=True)


def make_floor(plan: Plan, *, device=None, feature=None, progress: bool = False) -> dict:
    """The plan's floor: held-out real images scored like generated ones (ddpm.evaluate.real_floor; cached)."""
    from ddpm.evaluate import real_floor

    cfg, floor = plan.config, plan.floor
    return real_floor(cfg.dataset, cfg.resolution, num_held_out=floor.num_generated, num_real=floor.num_real,
                      split=cfg.split, batch_size=cfg.fid_batch_size, device=device, feature=feature,
                      progress=progress)


def artifacts(plan: Plan) -> dict[str, tuple[int, int]]:
    """(mtime, size) of every checkpoint and result file of the plan's runs: what training and evaluation write."""
    files = {}
    for spec in plan.runs.values():
        run_dir = spec.config.run_dir
        for path in [run_dir / CHECKPOINT_NAME, *sorted((run_dir / "metrics").glob("*.json"))]:
            if path.is_file():
                stat = path.stat()
                files[str(path)] = (stat.st_mtime_ns, stat.st_size)
    return files


def plan_is_made(plan: Plan) -> bool:
    from ddpm.runfolder import run_is_finished

    return (all(run_is_finished(spec.config) for spec in plan.runs.values())
            and all(stored_result(plan, spec) is not None for spec in plan.evaluations))


# ----------------------------------------------------------------------------------------------------------------------
# The results files
def training_row(plan: Plan, key: str) -> dict:
    """One row of the training table, from the run's checkpoint and stats (no network is loaded)."""
    from ddpm.runfolder import count_config_parameters, read_stats

    cfg = plan.run_config(key)
    state = load_checkpoint(cfg.run_dir / CHECKPOINT_NAME, mmap=True)
    parameters = count_config_parameters(cfg)
    stats = read_stats(cfg.run_dir)[-5:]
    images, seconds = state["step"] * cfg.batch_size, state["seconds"]
    return {"run": cfg.run_dir.name, "parameters": f"{parameters:,}", "steps": state["step"], "batch": cfg.batch_size,
            "images seen": images, "training seconds": round(seconds), "images/s": round(images / max(seconds, 1e-9), 1),
            "stopped by train_minutes": "yes" if state["step"] < cfg.total_steps else "no",
            "final loss": round(sum(s["loss"] for s in stats) / len(stats), 4) if stats else None}


def write_results(plan: Plan, hardware: str, extra: dict | None = None) -> tuple[Path, Path]:
    """figures/<profile>/results.md and results.json from the plan's runs and stored results. Keys of `extra` (the
    notebook adds its sampling timings) are merged in; earlier extra keys are kept."""
    from ddpm.evaluate import results_table

    results = [stored_result(plan, spec) for spec in plan.evaluations]
    missing = [spec.label for spec, result in zip(plan.evaluations, results) if result is None]
    if missing:
        raise ValueError(f"no stored result for {', '.join(missing)}: run the evaluate phase first")
    floor = make_floor(plan)
    summary = {"profile": plan.profile, "hardware": hardware, "protocol": plan.protocol,
               "training": [training_row(plan, key) for key in plan.runs], "evaluations": results, "floor": floor}
    json_path, md_path = plan.config.figures / "results.json", plan.config.figures / "results.md"
    if json_path.is_file():
        summary = {**{k: v for k, v in json.loads(json_path.read_text()).items() if k not in summary}, **summary}
    summary.update(extra or {})
    header = f"Profile `{plan.profile}` on {hardware}. FID/KID protocol: {plan.protocol}; EMA weights unless `raw`.\n\n"
    atomic_write_text(md_path, header + results_table([*results, floor]) + "\n")
    atomic_write_text(json_path, json.dumps(summary, indent=2) + "\n")
    return md_path, json_path


# ----------------------------------------------------------------------------------------------------------------------
# The notebook, executed headless in this Python environment
def notebook_fingerprint(plan: Plan, notebook: Path) -> str:
    """What an executed notebook depends on: the plan's config, its runs and results on disk, the notebook's code."""
    import nbformat

    cells = [c.source for c in nbformat.read(notebook, as_version=4).cells]
    blob = json.dumps([plan.config.to_dict(), sorted(artifacts(plan).items()), cells], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def execute_notebook(notebook: Path, out: Path, fingerprint: str) -> None:
    """Run every cell of `notebook` in a kernel of this Python (as nbval --nbval-current-env does) and write the
    executed copy to `out`. A failing cell raises NotebookFailed, and the partial copy is kept beside `out`."""
    import ipykernel.kernelspec
    import nbformat
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return self.kernel_spec_class(resource_dir=ipykernel.kernelspec.RESOURCES,
                                          **ipykernel.kernelspec.get_kernel_dict())

    nb = nbformat.read(notebook, as_version=4)
    kernel = KernelManager(kernel_name="this-python", kernel_spec_manager=ThisPython(), transport="ipc")
    client = NotebookClient(nb, km=kernel, timeout=None, resources={"metadata": {"path": str(REPO_ROOT)}})
    try:
        client.execute()
    except CellExecutionError as error:
        partial = out.with_suffix(".failed.ipynb")
        partial.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, partial)
        cell = next((i for i, c in enumerate(nb.cells) if any(o.output_type == "error" for o in c.get("outputs", []))),
                    None)
        where = "" if cell is None else f" in cell {cell}"
        raise NotebookFailed(f"{notebook.name} failed{where}: {error.ename}: {error.evalue} "
                             f"(the partial notebook is {partial})") from None
    finally:
        if kernel.has_kernel:  # a kernel manager passed in is ours to shut down
            kernel.shutdown_kernel()
    nb.metadata["ddpm"] = {"fingerprint": fingerprint}
    atomic_write_text(out, nbformat.writes(nb))


def run_notebook_phase(plan: Plan, notebook: Path, out: Path, *, rerun: bool = False, say=print) -> bool:
    """Execute the notebook unless `out` was executed on the same fingerprint. Returns whether it ran."""
    import nbformat

    fingerprint = notebook_fingerprint(plan, notebook)
    if not rerun and out.is_file():
        if nbformat.read(out, as_version=4).metadata.get("ddpm", {}).get("fingerprint") == fingerprint:
            say(f"  {out}: executed on the same plan, runs and notebook; kept")
            return False
    made_before, before = plan_is_made(plan), artifacts(plan)
    start = time.perf_counter()
    say(f"  executing {notebook.name} -> {out}")
    execute_notebook(notebook, out, fingerprint)
    after = artifacts(plan)
    changed = sorted(path for path in after if after[path] != before.get(path))
    if made_before and changed:
        raise NotebookFailed(f"the notebook made again what the plan had made ({', '.join(changed)}): "
                             f"solution.ipynb and ddpm/plan.py disagree")
    if changed:
        nb = nbformat.read(out, as_version=4)  # it made what was missing: record the fingerprint of what exists now
        nb.metadata["ddpm"] = {"fingerprint": notebook_fingerprint(plan, notebook)}
        atomic_write_text(out, nbformat.writes(nb))
    say(f"  executed in {time.perf_counter() - start:.0f} s; it trained and evaluated "
        f"{'nothing' if not changed else str(len(changed)) + ' things'} itself")
    return True


# ----------------------------------------------------------------------------------------------------------------------
def reproduce(
    profile: str | None = None,
    *,
    phases: tuple[str, ...] = PHASES,
    notebook: Path = NOTEBOOK,
    notebook_out: Path | None = None,
    readme: Path | None = None,
    rerun_notebook: bool = False,
    say=print,
) -> Plan:
    """Carry out the plan of `profile` (default: env DDPM_PROFILE, else from the hardware), phase by phase."""
    from ddpm.distributed import describe_hardware, resolve_device
    from ddpm.show import update_readme
    from ddpm.train import run_is_finished, train

    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise ValueError(f"--phases: unknown phase(s) {unknown}; choose from {', '.join(PHASES)}")
    cfg = get_config(profile)
    os.environ["DDPM_PROFILE"] = cfg.profile  # the notebook's kernel inherits it, with every DDPM_<FIELD> override
    plan = build_plan(cfg)
    device = resolve_device(cfg.device)
    say(f"reproduce: profile {plan.profile}, {len(plan.runs)} runs, {len(plan.evaluations)} evaluations, on "
        f"{describe_hardware(device)}; phases {', '.join(p for p in PHASES if p in phases)}")
    start = phase_start = time.perf_counter()

    def phase_done(name: str) -> None:  # each phase's wall-clock, for the budget's measured costs (ddpm/budget.py)
        nonlocal phase_start
        say(f"  {name}: {time.perf_counter() - phase_start:.1f} s")
        phase_start = time.perf_counter()

    if "train" in phases:
        say("== train")
        for key, spec in plan.runs.items():
            if run_is_finished(spec.config):
                say(f"  {key}: finished run in {display_path(spec.config.run_dir)}; kept")
                continue
            result = train(spec.config)
            say(f"  {key}: step {result.step} of {spec.config.total_steps} in {result.seconds:.0f} s of training")
        phase_done("train")

    if "evaluate" in phases:
        say("== evaluate")
        for spec in plan.evaluations:
            if stored_result(plan, spec) is not None:
                say(f"  {spec.label}: stored result kept")
                continue
            result = make_evaluation(plan, spec, device=device, progress=cfg.progress)
            say(f"  {spec.label}: FID {result['fid']:.2f}, KID {result['kid_mean']:.4f} in {result['seconds']:.0f} s")
        floor = make_floor(plan, device=device, progress=cfg.progress)
        say(f"  floor, {floor['num_generated']} held-out real images: FID {floor['fid']:.2f}, "
            f"KID {floor['kid_mean']:.4f} ± {floor['kid_std']:.4f}")
        phase_done("evaluate")

    out = notebook_out or REPO_ROOT / "outputs" / f"solution.{plan.profile}.ipynb"
    if "notebook" in phases:
        say("== notebook")
        run_notebook_phase(plan, Path(notebook), Path(out), rerun=rerun_notebook, say=say)
        phase_done("notebook")

    if "results" in phases:
        say("== results")
        md, js = write_results(plan, describe_hardware(device))
        readme = readme or REPO_ROOT / "README.md"
        update_readme(plan.profile, readme, figures_dir=plan.config.figures.parent)
        say(f"  wrote {md}, {js} and the results block of {readme}")
        phase_done("results")
    say(f"reproduce: done in {time.perf_counter() - start:.0f} s")
    sys.stdout.flush()
    return plan
