"""See the notebook as a grader sees it: its committed outputs (nothing is executed) as HTML and as PNG screenshots.

Usage:
    make render
    .venv/bin/python tools/render_notebook.py [NOTEBOOK] [--out outputs/render] [--max-cells 6]

Writes OUT/<notebook>.html (the whole notebook, as nbconvert's `lab` template renders it) and one screenshot per
chunk of consecutive cells, OUT/01-<slug>.png, OUT/02-<slug>.png, ...: a chunk starts at every `#`/`##` heading
and holds at most --max-cells cells, because a whole notebook is far too tall for one screenshot. Then look at the
PNGs. Needs Debian's `chromium` (headless). Math is typeset by MathJax, loaded from a local copy when one is
installed (Debian's `libjs-mathjax`), because the CDN copy nbconvert links to cannot load offline.
"""
import argparse
import base64
import io
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import NoReturn

import nbformat
from nbconvert import HTMLExporter
from PIL import Image, ImageChops

REPO_ROOT = Path(__file__).resolve().parents[1]
WIDTH = 1280
MAX_HEIGHT = 16384  # Skia's largest surface: taller screenshots can come back cut or blank; use a smaller --max-cells
BOTTOM_MARGIN = 40  # content this close to the window's bottom edge may continue below it
LOCAL_MATHJAX = [
    Path("/usr/share/javascript/mathjax/MathJax.js"),  # Debian's libjs-mathjax (MathJax 2.7, as nbconvert uses)
    Path("/usr/share/mathjax/MathJax.js"),
]
CHROMIUMS = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]


def fail(message: str) -> NoReturn:
    """One clear line and exit 1: a traceback would bury what is missing."""
    print(f"render_notebook: {message}", file=sys.stderr)
    sys.exit(1)


def find_chromium() -> str:
    for name in CHROMIUMS:
        if path := shutil.which(name):
            return path
    fail("no headless Chromium found (apt-get install chromium)")


def mathjax_url() -> str | None:
    """A local MathJax if there is one; None keeps nbconvert's CDN URL (fine when the machine is online)."""
    for path in LOCAL_MATHJAX:
        if path.is_file():
            return path.as_uri() + "?config=TeX-AMS_CHTML-full,Safe"
    return None


def heading(cell) -> str | None:
    """The title of a cell that opens a chunk: a markdown cell starting with a level-1 or level-2 heading."""
    if cell.cell_type != "markdown":
        return None
    match = re.match(r"#{1,2} +(.+)", cell.source.lstrip())
    return match.group(1).strip() if match else None


def slugify(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:40].rstrip("-") or "cells"


def chunks(cells, max_cells: int) -> list[tuple[str, list]]:
    """Consecutive cells split at every heading, and again every max_cells cells (parts -2, -3, ...)."""
    sections: list[tuple[str, list]] = []
    for cell in cells:
        title = heading(cell)
        if title or not sections:
            sections.append((slugify(title or "start"), []))
        sections[-1][1].append(cell)
    out = []
    for slug, section in sections:
        for part, start in enumerate(range(0, len(section), max_cells), 1):
            out.append((slug if part == 1 else f"{slug}-{part}", section[start:start + max_cells]))
    return out


def to_html(nb, base_dir: Path) -> tuple[str, list[str]]:
    """nbconvert's HTML of nb, plus the warnings it gave (e.g. an output with no MIME type HTML can show).

    A `<base href>` at the notebook's folder makes relative links in outputs (`<img src="figures/...">`) resolve
    as they do next to the notebook on GitHub or in Jupyter, wherever the HTML file is written, without rewriting
    any output. It is an absolute file:// URL, so the HTML is only for this machine, which is all outputs/ is for.
    """
    exporter = HTMLExporter(template_name="lab")
    if url := mathjax_url():
        exporter.mathjax_url = url
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        html, _ = exporter.from_notebook_node(nb)
    base = f'<base href="{base_dir.resolve().as_uri()}/">'
    html = re.sub(r"<head[^>]*>", lambda m: m.group(0) + base, html, count=1)
    return html, sorted({str(w.message) for w in caught})


def text_stand_ins(nb) -> list[str]:
    """Outputs the HTML shows only as their text/plain (e.g. an image/gif as `<IPython.core.display.Image object>`).

    nbconvert warns only when an output has nothing it can show; these pass silently, so name them here.
    """
    priority = HTMLExporter(template_name="lab").config.NbConvertBase.display_data_priority
    notes = []
    for index, cell in enumerate(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            shown = next((mime for mime in priority if mime in data), None)
            if shown == "text/plain" and set(data) - {"text/plain"}:
                other = ", ".join(sorted(set(data) - {"text/plain"}))
                label = f"cell {index} (In [{cell.get('execution_count') or ' '}])"
                notes.append(f"{label}: {other} cannot be shown in HTML; it shows {data['text/plain']!r}")
    return notes


def image_heights(cell) -> int:
    """Pixel heights of the PNG/JPEG outputs of a cell, shown at most at natural size."""
    total = 0
    for output in cell.get("outputs", []):
        for mime in ("image/png", "image/jpeg"):
            if data := output.get("data", {}).get(mime):
                with Image.open(io.BytesIO(base64.b64decode(data))) as image:
                    total += image.height
    return total


def estimate_height(cells) -> int:
    """A generous guess at a chunk's page height; render() grows it if the content still reaches the bottom."""
    height = 200
    for cell in cells:
        lines = cell.source.count("\n") + 1
        for output in cell.get("outputs", []):
            text = output.get("text") or output.get("data", {}).get("text/markdown", "")
            lines += str(text).count("\n") + 1
        height += 60 + 24 * lines + image_heights(cell)
    return int(height * 1.3)


def screenshot(chromium: str, html: Path, png: Path, height: int, profile: Path) -> None:
    command = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
        "--allow-file-access-from-files",  # the local MathJax loads its fonts and extensions from file://
        f"--user-data-dir={profile}",  # never share a profile with another Chromium on this machine
        "--virtual-time-budget=15000", f"--window-size={WIDTH},{height}", f"--screenshot={png}", html.as_uri(),
    ]
    png.unlink(missing_ok=True)  # so that a failed retry cannot pass off the previous attempt's file
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        fail(f"chromium took over 180 s to screenshot {html.name}")
    if done.returncode != 0 or not png.is_file():
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        fail(f"chromium could not screenshot {html.name}: {tail}")


def crop_blank_bottom(png: Path) -> bool:
    """Cut the trailing background rows off png; False when the content reaches the bottom (may be cut off)."""
    with Image.open(png) as image:
        image = image.convert("RGB")
    background = Image.new("RGB", image.size, image.getpixel((image.width - 1, image.height - 1)))
    box = ImageChops.difference(image, background).getbbox()
    bottom = box[3] if box else 0
    if bottom > image.height - BOTTOM_MARGIN:
        return False
    image.crop((0, 0, image.width, min(image.height, bottom + 24))).save(png, optimize=True)
    return True


def render(chromium: str, html: Path, png: Path, height: int, profile: Path) -> None:
    """Screenshot at the estimated height, doubling it while the content runs past the bottom edge."""
    while True:
        height = min(height, MAX_HEIGHT)
        screenshot(chromium, html, png, height, profile)
        if crop_blank_bottom(png):
            return
        if height == MAX_HEIGHT:
            print(f"  warning: {png.name} is cut off at {MAX_HEIGHT}px; try a smaller --max-cells", file=sys.stderr)
            return
        height *= 2


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("notebook", nargs="?", default=str(REPO_ROOT / "solution.ipynb"))
    parser.add_argument("--out", default=str(REPO_ROOT / "outputs" / "render"))
    parser.add_argument("--max-cells", type=int, default=6, help="most cells in one screenshot")
    args = parser.parse_args(argv)

    notebook, out = Path(args.notebook), Path(args.out)
    if not notebook.is_file():
        fail(f"no notebook at {notebook}")
    chromium = find_chromium()
    nb = nbformat.read(notebook, as_version=4)
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("[0-9][0-9]-*.png"):  # a previous render may have had more chunks
        stale.unlink()

    html, notes = to_html(nb, notebook.parent)
    (out / f"{notebook.stem}.html").write_text(html, encoding="utf-8")
    if not mathjax_url():
        notes.append("no local MathJax (apt-get install libjs-mathjax): offline, math shows as raw TeX")
    for note in notes + text_stand_ins(nb):
        print(f"note: {note}")

    written = []
    with tempfile.TemporaryDirectory(prefix="render-notebook-") as tmp:
        for number, (slug, cells) in enumerate(chunks(nb.cells, args.max_cells), 1):
            name = f"{number:02d}-{slug}"
            part = nbformat.from_dict({**nb, "cells": cells})
            page = Path(tmp) / f"{name}.html"
            page.write_text(to_html(part, notebook.parent)[0], encoding="utf-8")
            render(chromium, page, out / f"{name}.png", estimate_height(cells), Path(tmp) / "profile")
            written.append(out / f"{name}.png")
            print(f"  {written[-1]}", flush=True)
    print(f"{len(written)} screenshots and {out / notebook.stem}.html written")


if __name__ == "__main__":
    main()
