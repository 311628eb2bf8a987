"""Helpers for the notebook: show the package's real source, and lay out figures and tables, so that the notebook
narrates the code it runs instead of a copy of it."""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from ddpm.config import REPO_ROOT


def source_markdown(*objects) -> str:
    """The source of functions/classes as fenced Python blocks, each headed by its file and line."""
    blocks = []
    for obj in objects:
        lines, first_line = inspect.getsourcelines(obj)
        path = Path(inspect.getsourcefile(inspect.unwrap(obj))).resolve()  # decorated (no_grad): the function's file
        try:
            path = path.relative_to(REPO_ROOT)
        except ValueError:
            pass
        blocks.append(f"`{path}:{first_line}`, `{obj.__qualname__}`\n\n```python\n{textwrap.dedent(''.join(lines))}```")
    return "\n\n".join(blocks)


def show_source(*objects):
    """Display the source in a notebook (Markdown: highlighted by Jupyter and by GitHub's renderer alike)."""
    from IPython.display import Markdown, display

    display(Markdown(source_markdown(*objects)))


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    columns = columns or list(rows[0])
    def cell(value):
        return f"{value:.4g}" if isinstance(value, float) else str(value)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def show_table(rows: list[dict], columns: list[str] | None = None) -> None:
    from IPython.display import Markdown, display

    display(Markdown(markdown_table(rows, columns)))


def show_image(path: Path | str, width: int | None = None) -> None:
    """Display a PNG or GIF written under figures/ (the file on disk is what the reader sees)."""
    from IPython.display import Image, display

    display(Image(filename=str(path), width=width))


# ----------------------------------------------------------------------------------------------------------------------
# The README's results block is generated from the committed figures/<profile>/ files, never typed by hand:
#   python -m ddpm.show readme cpu     (rewrites the block between the markers in README.md)
README_START, README_END = "<!-- results:start -->", "<!-- results:end -->"


def readme_results_block(profile: str, figures_dir: Path | None = None, readme: Path | None = None) -> str:
    import json
    import os

    figures = Path(figures_dir or REPO_ROOT / "figures") / profile
    readme = Path(readme or REPO_ROOT / "README.md")
    summary = json.loads((figures / "results.json").read_text())
    improved = next(r for r in summary["training"] if "-unet-flowers102-" in r["run"])
    name = improved["run"]
    relative = Path(os.path.relpath(figures, readme.resolve().parent)).as_posix()  # links work from the README
    lines = [
        f"### Results of the committed run (profile `{profile}`, {summary['hardware']})",
        "",
        f"4x8 samples of the improved UNet (EMA weights, DDIM-100) and a whole grid denoising with DDPM:",
        "",
        f"![samples]({relative}/grid-{name}-ema-ddim100.png) ![denoising]({relative}/denoising-{name}-ddpm.gif)",
        "",
        "Training:",
        "",
        markdown_table(summary["training"]),
        "",
        (figures / "results.md").read_text().strip(),
    ]
    return "\n".join(lines)


def update_readme(profile: str, readme: Path | None = None, figures_dir: Path | None = None) -> None:
    """Rewrite the results block between the markers of the README from figures/<profile>/results.*."""
    readme = Path(readme or REPO_ROOT / "README.md")
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results block: it needs the lines {README_START} and {README_END}")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    block = readme_results_block(profile, figures_dir, readme)
    readme.write_text(f"{head}{README_START}\n{block}\n{README_END}{tail}")


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "readme":
        sys.exit("usage: python -m ddpm.show readme PROFILE")
    update_readme(sys.argv[2])
