"""Shipped weights: a run's EMA network in a small folder that sampling and scoring read but never write.

    weights/<name>/
      ema.pt        the EMA weights alone (no optimiser, no raw weights), fp16 by default, with the run's config,
                    step, training seconds and labels
      config.json   the same config, readable; labels.json (conditional runs), stats.jsonl and log.txt: what made it
      SHA256        the sha256 of every file above (`sha256sum -c SHA256` format); loading checks it

    python -m ddpm export --checkpoint runs/cpu-long-unet-flowers102-32px --out weights/cpu-long
    python -m ddpm sample --checkpoint weights/cpu-long --label rose

`load_run` (ddpm/train.py) reads such a folder as a run with EMA weights only. What is derived from it (grids,
FID results) goes to `outputs/<name>/` instead of the folder itself, so a clone's tracked files stay as shipped.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ddpm.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from ddpm.files import atomic_save, atomic_write_text, read_json_lines, sha256
from ddpm.config import resolve_path
from ddpm.labels import LABELS_JSON

WEIGHTS_NAME = "ema.pt"
SUMS_NAME = "SHA256"
RECORDS = ("stats.jsonl", "log.txt")  # copied from the run folder as they are
OUTPUTS_DIR = "outputs"  # what is derived from a shipped folder goes to outputs/<folder name>/
MAX_BYTES = 8 * 2**20  # the largest ema.pt a clone should carry
# The long CPU run (profile cpu-long): its shipped EMA, and its scores as benchmarks/long_run.py and guidance.py store
# them (the notebook and the README read these; nothing here recomputes them)
LONG_RUN_WEIGHTS = "weights/cpu-long"
LONG_RUN_RESULTS = "benchmarks/long-run"


class WeightsError(ValueError):
    """A shipped weights folder that is incomplete or changed since it was written (the message names the file)."""


def is_weights_folder(path: Path | str) -> bool:
    path = Path(path)
    return path.is_dir() and (path / WEIGHTS_NAME).is_file() and not (path / CHECKPOINT_NAME).exists()


def outputs_dir(folder: Path | str) -> Path:
    """Where grids and results made from a shipped folder go: outputs/<its name>/."""
    return resolve_path(OUTPUTS_DIR) / Path(folder).resolve().name


def ema_state_dict(state: dict, dtype: torch.dtype | None = None, which: str = "ema") -> dict[str, torch.Tensor]:
    """An EMA network's weights from a checkpoint (AveragedModel keeps them under "module."), floats as `dtype`
    (None: as stored)."""
    return {k[len("module."):]: (v.to(dtype).clone() if dtype is not None and v.is_floating_point() else v)
            for k, v in state[which].items() if k.startswith("module.")}


def export_weights(run_dir: Path | str, out: Path | str, *, dtype: torch.dtype = torch.float16,
                   which: str = "ema", guidance_scale: float | None = None) -> Path:
    """Write the shipped folder `out` from the checkpoint of `run_dir` (a finished or partial run); which="ema2": its
    second EMA (ema2_half_life_kimg), shipped as the folder's EMA; guidance_scale: the default scale the folder is
    sampled with (a conditional run's best scale, measured after training, can differ from the one it trained with).
    Every file is written atomically and SHA256 last, so an interrupted export fails its check instead of loading
    half."""
    run_dir, out = Path(run_dir), Path(out)
    path = run_dir if run_dir.is_file() else run_dir / CHECKPOINT_NAME
    run_dir = path.parent
    if out.resolve() == run_dir.resolve():
        raise ValueError(f"--out {out}: that is the run folder itself; give a folder of its own, e.g. weights/<name>")
    state = load_checkpoint(path)
    if which not in state:
        raise ValueError(f"{path} has no {which!r} weights (a second EMA needs ema2_half_life_kimg)")
    weights = ema_state_dict(state, dtype, which)
    if which == "ema2":  # the folder's config describes the EMA it ships
        state["config"] = {**state["config"], "ema_half_life_kimg": state["config"]["ema2_half_life_kimg"],
                           "ema2_half_life_kimg": None}
    if guidance_scale is not None:
        if not state["config"].get("num_classes"):
            raise ValueError(f"--guidance-scale: {path} is unconditional (num_classes=0); guidance needs labels")
        if guidance_scale < 0:
            raise ValueError(f"--guidance-scale must be 0 or more, got {guidance_scale}")
        state["config"] = {**state["config"], "guidance_scale": float(guidance_scale)}
    if not all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()):
        raise CheckpointError(f"{path}: its EMA weights are not finite in {dtype} (too large for it?); nothing written")
    (out / SUMS_NAME).unlink(missing_ok=True)  # from here until the end, the folder reads as incomplete
    atomic_save({"config": state["config"], "step": state["step"], "seconds": state["seconds"],
                 "classes": state.get("classes"), "ema": weights}, out / WEIGHTS_NAME)
    atomic_write_text(out / "config.json", json.dumps(state["config"], indent=2) + "\n")
    files = [WEIGHTS_NAME, "config.json"]
    if state.get("classes"):
        atomic_write_text(out / LABELS_JSON, json.dumps(state["classes"], indent=1) + "\n")
        files.append(LABELS_JSON)
    for name in RECORDS:
        if (run_dir / name).exists():
            shutil.copyfile(run_dir / name, out / name)
            files.append(name)
    atomic_write_text(out / SUMS_NAME, "".join(f"{sha256(out / name)}  {name}\n" for name in files))
    return out


def verify(folder: Path | str) -> list[str]:
    """Check every file listed in folder/SHA256; the names checked. WeightsError names the first that fails."""
    folder = Path(folder)
    sums = folder / SUMS_NAME
    if not sums.is_file():
        raise WeightsError(f"{folder} has no {SUMS_NAME} file: an incomplete export; write it again with "
                           f"python -m ddpm export")
    names = []
    for number, line in enumerate(sums.read_text().splitlines(), 1):
        if not line.strip():
            continue
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64 or "/" in name or name.startswith("."):
            raise WeightsError(f"{sums}, line {number}: expected '<sha256>  <file name>', got {line!r}")
        if not (folder / name).is_file():
            raise WeightsError(f"{folder / name} is listed in {sums} but missing")
        if sha256(folder / name) != digest:
            raise WeightsError(f"{folder / name} does not match its sha256 in {sums}: the file was changed or "
                               f"damaged (git checkout -- {folder} restores a shipped folder)")
        names.append(name)
    if WEIGHTS_NAME not in names:
        raise WeightsError(f"{sums} does not list {WEIGHTS_NAME}")
    return names


def load_weights_file(folder: Path | str, map_location="cpu") -> dict:
    """The checked contents of folder/ema.pt: config, step, seconds, classes and the EMA weights (as float32)."""
    folder = Path(folder)
    verify(folder)
    state = load_checkpoint(folder / WEIGHTS_NAME, map_location=map_location, required=("config", "step", "ema"))
    state["ema"] = {k: v.float() if v.is_floating_point() else v for k, v in state["ema"].items()}
    return state


def long_run_results(folder: Path | str = LONG_RUN_RESULTS) -> dict:
    """The long run's stored scores: {"scores": one row per scored snapshot (KID/FID against images seen, with the
    floor), "guidance": one row per guidance scale of the shipped weights, "nearest": the memorisation check or None}."""
    folder = resolve_path(folder)
    nearest = folder / "nearest.json"
    return {"scores": read_json_lines(folder / "scores.jsonl"), "guidance": read_json_lines(folder / "guidance.jsonl"),
            "nearest": json.loads(nearest.read_text()) if nearest.is_file() else None}
