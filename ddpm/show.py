"""Helpers for the notebook: show the package's real source, and lay out figures and tables, so that the notebook
narrates the code it runs instead of a copy of it."""
from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

from ddpm.config import REPO_ROOT


def _sources(objects) -> list[tuple[str, str, str]]:
    """(where, qualified name, dedented source) of each function/class: where is `file:line`, the file relative to
    the repository, and for a decorated method (no_grad) the method's own file, not the decorator's."""
    sources = []
    for obj in objects:
        lines, first_line = inspect.getsourcelines(obj)
        path = Path(inspect.getsourcefile(inspect.unwrap(obj))).resolve()
        try:
            path = path.relative_to(REPO_ROOT)
        except ValueError:
            pass
        sources.append((f"{path.as_posix()}:{first_line}", obj.__qualname__, textwrap.dedent("".join(lines))))
    return sources


def source_markdown(*objects) -> str:
    """The source of functions/classes as fenced Python blocks, each headed by its file and line."""
    return "\n\n".join(f"`{where}`, `{name}`\n\n```python\n{code}```" for where, name, code in _sources(objects))


def source_html(*objects) -> str:
    """The same as HTML: Pygments colours as inline styles, in the code font. A Markdown code block shown as a cell
    *output* is set in the proportional text font by JupyterLab and nbconvert (`.jp-OutputArea-output pre` inherits
    it); a styled <pre> stays monospaced there, and GitHub, which drops the styles, sets <pre> monospaced anyway."""
    import html

    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    formatter = HtmlFormatter(noclasses=True, nobackground=True,
                              prestyles="font-family: var(--jp-code-font-family, monospace)")
    return "\n".join(f"<p><code>{html.escape(where)}</code>, <code>{html.escape(name)}</code></p>\n"
                     f"{highlight(code, PythonLexer(), formatter)}" for where, name, code in _sources(objects))


def show_source(*objects):
    """Display the package's source of functions/classes in a notebook (source_html)."""
    from IPython.display import HTML, display

    display(HTML(source_html(*objects)))


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


def animation_html(path: Path | str, width: int | None = None, alt: str = "", *, embed: bool = False) -> str:
    """An <img> tag for a GIF: src relative to the repository root (the notebook sits there, so does the nbconvert
    HTML written beside it), absolute outside it, or the file itself as a data: URI with embed=True (no file to
    resolve, e.g. on GitHub, at 4/3 of the size in the notebook). The browser upscales it without smoothing
    (pixelated); width defaults to the smallest whole multiple of the GIF's width that is at least 768 px."""
    import html
    import math

    path = Path(path).resolve()
    if width is None:
        from PIL import Image

        with Image.open(path) as gif:
            width = gif.width * math.ceil(768 / gif.width)  # whole multiples keep every GIF pixel the same size
    if embed:
        import base64

        src = "data:image/gif;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    else:
        src = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else path.as_posix()
    return (f'<img src="{html.escape(src)}" width={int(width)} style="image-rendering: pixelated" '
            f'alt="{html.escape(alt)}">')


def show_animation(path: Path | str, width: int | None = None, alt: str = "", *, embed: bool = False) -> None:
    """Display a committed GIF upscaled crisply (IPython's Image cannot set image-rendering): see animation_html."""
    from IPython.display import HTML, display

    display(HTML(animation_html(path, width, alt, embed=embed)))


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
    lines = [*_long_run_lines(figures, relative, summary["hardware"]),
        f"### Results of the committed run (profile `{profile}`, {summary['hardware']})",
        "",
        "4x8 samples of the notebook's own improved UNet (EMA weights, DPM-Solver++(2M), seed 123), trained in the "
        "run below:",
        "",
        f"![samples]({relative}/grid-{name}-seed123.png)",
        "",
        "Training:",
        "",
        markdown_table(summary["training"]),
        "",
        (figures / "results.md").read_text().strip(),
    ]
    return "\n".join(lines)


def _long_run_lines(figures: Path, relative: str, hardware: str) -> list[str]:
    """The README's lead: the long run's grid and denoising GIF (as the notebook drew them) and its stored scores at
    its guidance scale (benchmarks/long-run/); nothing when the notebook has not drawn them."""
    from ddpm.runfolder import load_run
    from ddpm.weights import LONG_RUN_RESULTS, LONG_RUN_WEIGHTS, long_run_results

    if not (figures / "grid-cpu-long-seed123.png").is_file():
        return []
    run = load_run(REPO_ROOT / LONG_RUN_WEIGHTS)
    stored = long_run_results(REPO_ROOT / LONG_RUN_RESULTS)
    lines = [f"### Flowers from the long CPU run (`{LONG_RUN_WEIGHTS}`)", "",
             f"32 samples of the shipped weights ({run.images_seen:,} images of training, {run.seconds / 3600:.1f} h "
             f"on {hardware}; DPM-Solver++(2M) 20 steps, guidance {run.guidance_scale:g}, seed 123), and eight of "
             "them denoising with DDPM (x_t left, the network's guess of x_0 right):", "",
             f"![long run samples]({relative}/grid-cpu-long-seed123.png)", "",
             f'<img src="{relative}/denoising-cpu-long-ddpm.gif" width="600" alt="DDPM denoising">', ""]
    row = next((r for r in stored["guidance"] if r["guidance_scale"] == run.guidance_scale), None)
    if row and stored["scores"]:
        floor = stored["scores"][-1]
        lines += [f"At guidance {row['guidance_scale']:g}: **KID {row['kid_mean']:.4f} ± {row['kid_std']:.4f}, FID "
                  f"{row['fid']:.1f}** ({row['num_generated']} generated against all {row['num_real']} real flowers "
                  f"at 32 px); the real-vs-real floor of the same protocol: KID {floor['floor_kid_mean']:.4f} ± "
                  f"{floor['floor_kid_std']:.4f}, FID {floor['floor_fid']:.1f}. The notebook's section 5, *Longer "
                  "training*, has the curves against images seen and the guidance scale.", ""]
    return lines


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
