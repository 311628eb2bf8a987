#!/usr/bin/env bash
# The device's last call: wait (at most WAIT_S seconds) for tools/gpu/run.sh to end, then pack what the run made into
# $OUT/results.tar.gz: the executed notebook, figures/<profile>/, the README, each run's config.json, stats.jsonl,
# log.txt and metrics/*.json, and the run's logs (phases.tsv, nvidia-smi). Run it again if the run is not over.
#   usage: tools/gpu/collect.sh PROFILE [WAIT_S]
set -u
cd "$(dirname "$0")/../.."
PROFILE=${1:?usage: tools/gpu/collect.sh PROFILE [WAIT_S]}
WAIT_S=${2:-540}
LOG_DIR=outputs/gpu-run-$PROFILE
OUT=${OUT:-outputs/collect-$PROFILE}
t0=$(date +%s)
until [ -e "$LOG_DIR/done" ] || [ $(( $(date +%s) - t0 )) -ge "$WAIT_S" ]; do
    sleep 5
done
[ -e "$LOG_DIR/done" ] && echo "run over after waiting $(( $(date +%s) - t0 )) s" || echo "run still going after $WAIT_S s"
mkdir -p "$OUT"
files=("$LOG_DIR" README.md)
[ -d "figures/$PROFILE" ] && files+=("figures/$PROFILE")
for f in outputs/solution."$PROFILE".ipynb outputs/solution."$PROFILE".failed.ipynb; do [ -e "$f" ] && files+=("$f"); done
for run in runs/"$PROFILE"-*/; do
    for f in config.json stats.jsonl log.txt labels.json samples metrics; do [ -e "$run$f" ] && files+=("$run$f"); done
done
tar czf "$OUT/results.tar.gz" --exclude='*.pt' "${files[@]}"
ls -la "$OUT"
cat "$LOG_DIR/phases.tsv" "$LOG_DIR/run.log"
tail -n 40 "$LOG_DIR"/evaluate-notebook-results.log 2> /dev/null
