"""The README's results come from the committed figures/ files, and the notebook's outputs from one real run."""
import json
import re

import pytest

from ddpm.config import REPO_ROOT
from ddpm.show import README_END, README_START, readme_results_block

NOTEBOOK = REPO_ROOT / "solution.ipynb"


def committed_profile() -> str:
    nb = json.loads(NOTEBOOK.read_text())
    first = next(c for c in nb["cells"] if c["cell_type"] == "code")
    text = "".join("".join(o.get("text", "")) for o in first.get("outputs", []))
    match = re.search(r"profile: (\S+) \| device: (\S+) \| hardware: ", text)
    assert match, "the first code cell's output must print the profile, device and hardware of the committed run"
    return match.group(1)


def test_readme_results_match_the_committed_figures():
    profile = committed_profile()
    readme = (REPO_ROOT / "README.md").read_text()
    block = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert block == readme_results_block(profile).strip(), "run: python -m ddpm.show readme " + profile


def test_committed_notebook_is_one_top_to_bottom_run_without_errors():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "outputs are not from one top-to-bottom run"
    assert not [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    checked = [c for c in code if "# NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert len(checked) >= 5


@pytest.mark.parametrize("name", ["results.md", "results.json"])
def test_committed_figures_exist_for_the_committed_profile(name):
    assert (REPO_ROOT / "figures" / committed_profile() / name).is_file()
