"""What a grader sees: the committed outputs of solution.ipynb are small, clean and render on GitHub and in nbconvert.

Nothing is executed: the checks read the committed JSON. Each check takes a notebook dict and returns its problems,
one line each naming the cell, so the unit tests below can also prove every check fails on a fabricated defect.
Run alone with: .venv/bin/python -m pytest tests/test_notebook_outputs.py
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "solution.ipynb"
MAX_BYTES = 3 * 1024 * 1024  # GitHub stops rendering large notebooks, and base64 GIFs bloat every clone
# What GitHub and nbconvert's HTML both show; image/gif, javascript and widget views fall back to text or nothing.
ALLOWED_MIME = {"text/plain", "text/markdown", "text/html", "image/png", "image/jpeg", "image/svg+xml"}
TEXT_MIME = {"text/plain", "text/markdown", "text/html", "image/svg+xml"}  # others are base64, not readable text
PROGRESS_BAR = re.compile(
    r"\d{1,3}%\|"  # tqdm's ' 37%|███▋ |'
    r"|(?:\d+(?:\.\d+)?|\?)\s?(?:it|img|B)/s\]"  # its rate at the end: '7.38it/s]', '?it/s]', '12.0img/s]'
    r"|s/it\]"  # a slow rate: '1.52s/it]'
    r"|\r(?!\n)"  # a carriage return that redraws the line: how any progress bar animates
)
MACHINE_PATH = re.compile(r"/work/|/home/|/tmp/|site-packages")


def cells_with_outputs(nb: dict):
    """(index, label, output) for every output; the label names the cell as a reader finds it: 'cell 32 (In [21])'."""
    for index, cell in enumerate(nb["cells"]):
        label = f"cell {index} (In [{cell.get('execution_count') or ' '}])"
        for output in cell.get("outputs", []):
            yield index, label, output


def as_text(value) -> str:
    return "".join(value) if isinstance(value, list) else str(value)


def output_texts(output: dict) -> list[str]:
    """The human-readable text of an output: a stream, its text MIME types, or an error's traceback."""
    texts = [as_text(output["text"])] if "text" in output else []
    texts += [as_text(v) for mime, v in output.get("data", {}).items() if mime in TEXT_MIME]
    if output.get("output_type") == "error":
        texts += [output.get("evalue", ""), *output.get("traceback", [])]
    return texts


def per_cell(hits: list[tuple[str, str]]) -> list[str]:
    """One line per cell, its first hit and how many outputs more: a progress bar is often a dozen stream outputs."""
    lines: dict[str, list[str]] = {}
    for label, detail in hits:
        lines.setdefault(label, []).append(detail)
    return [f"{label}: {details[0]}" + (f" (and {len(details) - 1} more outputs)" if len(details) > 1 else "")
            for label, details in lines.items()]


def snippet(text: str, match: re.Match) -> str:
    return repr(text[max(0, match.start() - 40):match.end() + 40])


def size_problems(path: Path, limit: int = MAX_BYTES) -> list[str]:
    size = path.stat().st_size
    if size <= limit:
        return []
    return [f"{path.name} is {size:,} bytes ({size / 2**20:.1f} MiB), over the {limit:,}-byte limit"]


def progress_bar_problems(nb: dict) -> list[str]:
    """Progress bars are for a live terminal: committed, they are dozens of half-drawn lines."""
    hits = []
    for _, label, output in cells_with_outputs(nb):
        if output.get("output_type") not in ("stream", "display_data", "execute_result"):
            continue
        for text in output_texts(output):
            if match := PROGRESS_BAR.search(text):
                hits.append((label, f"progress bar {snippet(text, match)}"))
                break
    return per_cell(hits)


def mime_problems(nb: dict) -> list[str]:
    hits = []
    for _, label, output in cells_with_outputs(nb):
        if extra := sorted(set(output.get("data", {})) - ALLOWED_MIME):
            hits.append((label, f"{', '.join(extra)} does not render on GitHub or in nbconvert's HTML"))
    return per_cell(hits)


def stderr_problems(nb: dict) -> list[str]:
    """A stderr stream renders as a pink block, which reads as an error to a grader."""
    return per_cell([
        (label, f"stderr {as_text(output.get('text', ''))[:80]!r}")
        for _, label, output in cells_with_outputs(nb)
        if output.get("output_type") == "stream" and output.get("name") == "stderr"
    ])


def machine_path_problems(nb: dict) -> list[str]:
    """Absolute paths leak the author's machine, and mean nothing on the reader's."""
    hits = []
    for _, label, output in cells_with_outputs(nb):
        for text in output_texts(output):
            if match := MACHINE_PATH.search(text):
                hits.append((label, f"machine path {snippet(text, match)}"))
                break
    return per_cell(hits)


CHECKS = [progress_bar_problems, mime_problems, stderr_problems, machine_path_problems]


# ---- the committed notebook ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def committed() -> dict:
    return json.loads(NOTEBOOK.read_text(encoding="utf-8"))


def report(problems: list[str]) -> None:
    """Fail with the problems alone: pytest's repr of a long list would bury them."""
    if problems:
        pytest.fail(f"{NOTEBOOK.name}: {len(problems)} problem(s)\n" + "\n".join(problems), pytrace=False)


def test_committed_notebook_is_small():
    report(size_problems(NOTEBOOK))


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_committed_notebook(committed, check):
    report(check(committed))


# ---- every check can fail: tiny fabricated notebooks ------------------------------------------------------------

PNG = "iVBORw0KGgo="  # any base64: only the MIME type is read


def stream(text: str, name: str = "stdout") -> dict:
    return {"output_type": "stream", "name": name, "text": [text]}


def display(data: dict) -> dict:
    return {"output_type": "display_data", "data": data, "metadata": {}}


def notebook(*outputs: dict) -> dict:
    """A markdown cell, then one code cell holding the outputs: its problems must name 'cell 1 (In [1])'."""
    return {
        "nbformat": 4, "nbformat_minor": 5, "metadata": {},
        "cells": [
            {"cell_type": "markdown", "metadata": {}, "source": ["## A heading"]},
            {"cell_type": "code", "metadata": {}, "execution_count": 1, "source": ["x"], "outputs": list(outputs)},
        ],
    }


GOOD = notebook(
    stream("loaded run-32px: step 1000, 45% of the images seen\nfigures go to figures/cpu\n"),
    display({"image/png": PNG, "text/plain": ["<Figure size 640x480 with 1 Axes>"]}),
    display({"text/markdown": ["| a | b |\n|---|---|\n| 1 | 2 |"], "text/plain": ["<Markdown>"]}),
    display({"text/html": ['<img src="figures/cpu/x.png">'], "text/plain": ["<HTML>"]}),
    {"output_type": "execute_result", "execution_count": 1, "data": {"text/plain": ["0.25"]}, "metadata": {}},
)

DEFECTS = {
    "tqdm bar": (progress_bar_problems, stream("sampling:  37%|███▋      | 368/1000 [00:50<01:27,  7.26it/s]")),
    "tqdm rate only": (progress_bar_problems, stream("sampling: 368/1000 [00:50<01:27, 7.26it/s]\n")),
    "slow tqdm rate": (progress_bar_problems, stream("epoch 3: 12/50 [00:18<00:57, 1.52s/it]\n")),
    "carriage return": (progress_bar_problems, stream("\rstep 10\rstep 20")),
    "image/gif": (mime_problems, display({"image/gif": PNG, "text/plain": ["<IPython.core.display.Image object>"]})),
    "javascript": (mime_problems, display({"application/javascript": ["alert(1)"], "text/plain": ["<JS>"]})),
    "widget view": (mime_problems, display({"application/vnd.jupyter.widget-view+json": {"model_id": "a"}})),
    "stderr warning": (stderr_problems, stream("UserWarning: TF32 is off\n", name="stderr")),
    "/work/ path": (machine_path_problems, stream("reusing /work/main/runs/cpu-unet-32px\n")),
    "/home/ in html": (machine_path_problems, display({"text/html": ['<img src="/home/me/x.png">']})),
    "/tmp/ in markdown": (machine_path_problems, display({"text/markdown": ["saved to `/tmp/x.gif`"]})),
    "site-packages traceback": (machine_path_problems, {
        "output_type": "error", "ename": "ValueError", "evalue": "bad",
        "traceback": ['File "/usr/lib/python3/site-packages/torch/nn.py", line 1'],
    }),
}


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_checks_pass_a_clean_notebook(check):
    assert check(GOOD) == []


@pytest.mark.parametrize("defect", DEFECTS)
def test_each_check_fails_on_its_defect_and_names_the_cell(defect):
    failing, output = DEFECTS[defect]
    nb = notebook(*GOOD["cells"][1]["outputs"], output)
    problems = failing(nb)
    assert len(problems) == 1 and problems[0].startswith("cell 1 (In [1]): "), problems
    others = [check for check in CHECKS if check is not failing and check(nb)]  # each defect trips only its check
    assert not others, [check.__name__ for check in others]


def test_size_check_fails_past_the_limit(tmp_path):
    path = tmp_path / "big.ipynb"
    path.write_bytes(b"x" * 101)
    assert size_problems(path, limit=101) == []
    assert size_problems(path, limit=100) == ["big.ipynb is 101 bytes (0.0 MiB), over the 100-byte limit"]
