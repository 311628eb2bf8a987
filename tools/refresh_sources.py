"""Keep the package source that solution.ipynb shows equal to the package, without executing the notebook.

Each `show_source(...)` call of a code cell displays the current source of the functions it names (ddpm/show.py).
When the package changes, the stored outputs of those cells go stale: other lines, other file:line headers. This
rewrites them from the package (in place), or with --check lists the stale cells, one line each, and exits 1.

    .venv/bin/python tools/refresh_sources.py            # rewrite the stale show_source outputs
    .venv/bin/python tools/refresh_sources.py --check    # what a test runs: nothing is written

Only the names a cell imports (its `from ddpm... import` lines) and the `show_source(...)` calls run, so no cell's
training or sampling does.
"""
from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NOTEBOOK = ROOT / "solution.ipynb"


def shown_sources(cell_source: str, namespace: dict) -> list[str]:
    """The HTML of every show_source call of a cell, with the names its imports (and earlier cells') bring."""
    from ddpm.show import source_html

    tree = ast.parse(cell_source)
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpm"):
            exec(compile(ast.Module([node], []), "<cell>", "exec"), namespace)
    calls = [node.value for node in tree.body if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
             and getattr(node.value.func, "id", None) == "show_source"]
    return [source_html(*(eval(compile(ast.Expression(arg), "<cell>", "eval"), namespace) for arg in call.args))
            for call in calls]


def stale_cells(nb: dict, fix: bool = False) -> list[str]:
    """One line per cell whose show_source output differs from the package's source; with fix, rewritten."""
    namespace: dict = {}
    problems = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code" or "show_source(" not in "".join(cell["source"]):
            continue
        wanted = shown_sources("".join(cell["source"]), namespace)
        shown = [o for o in cell.get("outputs", []) if "text/html" in o.get("data", {})]
        have = ["".join(o["data"]["text/html"]) for o in shown]
        if have == wanted:
            continue
        problems.append(f"cell {index}: its show_source output is not the package's source of today "
                        f"({len(have)} shown, {len(wanted)} wanted)")
        if fix:
            cell["outputs"] = [{"output_type": "display_data", "metadata": {},
                                "data": {"text/html": html.splitlines(keepends=True),
                                         "text/plain": ["<IPython.core.display.HTML object>"]}} for html in wanted]
    return problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--notebook", default=str(NOTEBOOK))
    parser.add_argument("--check", action="store_true", help="only list the stale cells (exit 1 if any)")
    args = parser.parse_args(argv)
    path = Path(args.notebook)
    nb = json.loads(path.read_text())
    problems = stale_cells(nb, fix=not args.check)
    for line in problems:
        print(line)
    if args.check:
        return 1 if problems else 0
    if problems:
        path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        print(f"rewrote {len(problems)} cells of {path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
