#!/usr/bin/env bash
# The device's first call: copy the data out of the working tree, start tools/gpu/run.sh in its own session (it
# outlives the call), then install the notebook's wheels (carried in .whl/) into /tmp/site-nb while the GPU trains.
#   usage: tools/gpu/start.sh PROFILE     (env PY; SKIP_NB_WHEELS=1 where the Python has them, as in a rehearsal)
set -u
cd "$(dirname "$0")/../.."
PROFILE=${1:?usage: tools/gpu/start.sh PROFILE}
PY=${PY:-python3}
LOG_DIR=outputs/gpu-run-$PROFILE
mkdir -p "$LOG_DIR" runs
# The data (carried by this call alone) moves out of the working tree: each later call rewrites the tree and drops
# carried paths it does not name again (seen on the H200, 2026-11-30), so the run reads it from DDPM_DATA_DIR.
mkdir -p /tmp/ddpm-data && cp -r data/. /tmp/ddpm-data/ && export DDPM_DATA_DIR=/tmp/ddpm-data
setsid nohup bash tools/gpu/run.sh "$PROFILE" > "$LOG_DIR/run.log" 2>&1 < /dev/null &
echo "started tools/gpu/run.sh $PROFILE (pid $!)"
if [ "${SKIP_NB_WHEELS:-0}" != 1 ]; then
    t0=$(date +%s)
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-nb .whl/*.whl \
        && echo "notebook wheels installed in /tmp/site-nb in $(( $(date +%s) - t0 )) s"
    PYTHONPATH=/tmp/site-nb $PY -c "import nbclient, ipykernel, nbformat, jupyter_client; print('nbclient', nbclient.__version__, 'ipykernel', ipykernel.__version__)"
fi
sleep "${WATCH_S:-20}"
cat "$LOG_DIR/run.log"; tail -n 5 "$LOG_DIR/train.log" 2> /dev/null
cat "$LOG_DIR/versions.txt" "$LOG_DIR/nvidia-smi.txt" 2> /dev/null
