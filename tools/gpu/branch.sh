#!/usr/bin/env bash
# Here, before the device's first call: put the checkout on a throw-away branch that travels light (under 64 MiB with
# the carried parts): figures/, data/fid-features/ and the data zips untracked and ignored in its .gitignore (the zips
# are carried by the first call alone, and an ignored path stays there), the notebook's outputs cleared. `--undo` comes
# back to main.
#   usage: tools/gpu/branch.sh [--undo]
set -eu
cd "$(dirname "$0")/../.."
IGNORED=(/figures/ /data/fid-features/ /data/flowers102/flowers102-64.zip /data/pets/pets-64.zip /data/craters/craters-64.zip)
if [ "${1:-}" = --undo ]; then
    git checkout -q main && git branch -D gpu-run-tmp && git status --short
    exit
fi
git checkout -q -b gpu-run-tmp
for path in "${IGNORED[@]}"; do path=${path#/}; git rm -r -q --cached "${path%/}"; done
printf '%s\n' "${IGNORED[@]}" >> .gitignore
${PY:-.venv/bin/python} - <<'PY'
import nbformat
nb = nbformat.read("solution.ipynb", as_version=4)
for cell in nb.cells:
    if cell.cell_type == "code":
        cell.outputs, cell.execution_count = [], None
nbformat.write(nb, "solution.ipynb")
PY
git add .gitignore
git commit -q -am "gpu-run-tmp: figures and data zips untracked, notebook outputs cleared (travels to the device)"
echo "travels: $(git ls-files -z | du -ch --files0-from=- | tail -n 1)"
