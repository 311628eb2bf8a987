#!/bin/sh
# Container entrypoint for ddpm-flowers.
#   run  (default)  execute solution.ipynb headless; the executed copy goes to $DDPM_OUTPUT_DIR,
#                   figures to figures/ (mount both to keep them)
#   lab             start JupyterLab on port 8888 (publish it with -p 8888:8888)
#   anything else   exec'd as given, e.g. `bash` or `python -m ddpm --help`
set -eu

export DDPM_PROFILE="${DDPM_PROFILE:-gpu}"
output_dir="${DDPM_OUTPUT_DIR:-outputs}"

command="${1:-run}"
if [ "$#" -gt 0 ]; then shift; fi

case "$command" in
    run)
        mkdir -p "$output_dir"
        echo "Executing solution.ipynb with DDPM_PROFILE=$DDPM_PROFILE -> $output_dir/solution.executed.ipynb"
        # timeout=-1: a full GPU training run takes hours; extra arguments go to nbconvert.
        exec jupyter nbconvert --to notebook --execute solution.ipynb \
            --output solution.executed.ipynb --output-dir "$output_dir" \
            --ExecutePreprocessor.timeout=-1 "$@"
        ;;
    lab)
        # 0.0.0.0: reachable through the published port; the access token is printed in the log.
        exec jupyter lab --ip=0.0.0.0 --port=8888 --no-browser "$@"
        ;;
    *)
        exec "$command" "$@"
        ;;
esac
