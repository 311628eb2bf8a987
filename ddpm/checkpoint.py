"""Reading checkpoints: what a file written by ``python -m ddpm train`` holds, checked with one error line when it is
not one. Writing them is atomic (ddpm/files.py)."""
from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(ValueError):
    """A file given as a checkpoint is not one written by ``python -m ddpm train`` (the message names it)."""


CHECKPOINT_KEYS = ("config", "step", "model", "ema")  # what every reader of a checkpoint needs


def _not_a_checkpoint(path: Path, reason: str) -> CheckpointError:
    reason = " ".join(reason.split()) or "unknown reason"  # one line: torch's messages span many
    if len(reason) > 200:
        reason = reason[:197] + "..."
    return CheckpointError(
        f"{path} is not a ddpm checkpoint (expected a torch file written by python -m ddpm train): {reason}"
    )


def _load_failure(path: Path, error: Exception) -> str:
    """Why torch.load refused the file, in a few words (its own messages run over many lines)."""
    if not zipfile.is_zipfile(path):
        return "not a complete torch file (torch.save writes a zip archive; this is another format or a truncated copy)"
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # weights_only refusals explain the pickle protocol at length; the line that matters names the offending global
    detail = next((line for line in lines if line.startswith("WeightsUnpickler error:")), lines[0] if lines else "")
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__


def first_mismatch(weights: Mapping, model: torch.nn.Module) -> str | None:
    """How a state dict fails to fit a network, in a few words (the first tensor that differs), or None if it fits."""
    expected = model.state_dict()
    for name, tensor in expected.items():
        if name not in weights:
            return f"tensor {name!r} (shape {tuple(tensor.shape)}) is missing from the file"
        if tuple(weights[name].shape) != tuple(tensor.shape):
            return (f"tensor {name!r} has shape {tuple(weights[name].shape)} in the file, {tuple(tensor.shape)} "
                    f"in the network")
    unexpected = next((name for name in weights if name not in expected), None)
    return None if unexpected is None else f"the file has a tensor {unexpected!r} that the network lacks"


def load_weights(model: torch.nn.Module, weights: Mapping, path: Path, what: str = "model") -> None:
    """model.load_state_dict(weights), or one line naming the file and the first mismatched tensor (torch's own
    message lists every tensor, over a hundred lines) when the weights do not fit the network of the file's config."""
    mismatch = first_mismatch(weights, model)
    if mismatch:
        raise CheckpointError(f"{path}: its {what} weights do not fit the network of its own config: {mismatch} "
                              f"(a checkpoint edited by hand, or written by another version of ddpm)")
    model.load_state_dict(weights)


def load_checkpoint(path: Path, map_location="cpu", *, mmap: bool = False, required=CHECKPOINT_KEYS) -> dict:
    """The checkpoint dict at `path` (mmap=True: tensors stay in the file until read, to look at the step or config).

    FileNotFoundError: nothing there. CheckpointError (a ValueError): a file that is not a ddpm checkpoint
    (truncated, another format, or a torch file without the checkpoint's keys). OSError: the file cannot be read.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train first (python -m ddpm train) or check the run folder")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as error:  # a truncated or foreign file: say which one
        if isinstance(error, OSError) and error.errno is not None:
            raise  # permission denied, I/O error: a problem of the file system, not of the content
        raise _not_a_checkpoint(path, _load_failure(path, error)) from error
    if not isinstance(state, dict):
        raise _not_a_checkpoint(path, f"it holds a {type(state).__name__}, not a dict")
    missing = [key for key in required if key not in state]
    if missing:
        raise _not_a_checkpoint(path, f"it has no {', '.join(repr(k) for k in missing)} entries")
    kinds = {"config": dict, "model": Mapping, "ema": Mapping}
    wrong = [key for key, kind in kinds.items() if key in required and not isinstance(state[key], kind)]
    if wrong:
        held = ", ".join(f"{k!r} is a {type(state[k]).__name__}" for k in wrong)
        raise _not_a_checkpoint(path, f"unexpected entries: {held}")
    return state
