"""Progress bars that stay readable in a terminal, a notebook and a CI log alike."""
from __future__ import annotations

import sys

from tqdm import tqdm


def progress_bar(iterable=None, *, disable: bool = False, **kwargs) -> tqdm:
    """A tqdm bar on stderr; refreshed at most every 10 s when stderr is not a terminal (notebooks, logs), so an
    executed notebook keeps a short record of it instead of thousands of redraws."""
    interactive = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    kwargs.setdefault("mininterval", 0.1 if interactive else 10.0)
    kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, disable=disable, **kwargs)
