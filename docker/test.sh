#!/usr/bin/env bash
# make docker-test: build the project's Dockerfile and run the image for real, on a machine with no GPU and no access
# to Docker Hub. The CUDA base cannot be pulled there, so a minimal Debian bootstrapped with debootstrap stands in for
# it (the Dockerfile's BASE_IMAGE build argument); everything after the FROM line is the real recipe.
#
#   1. engine    a Docker engine with BuildKit; as root, docker.io is installed from Debian and dockerd started
#   2. base      debootstrap --variant=minbase $SUITE, imported with `docker import` (kept for the next run)
#   3. build     BASE_IMAGE=the stand-in, UID/GID build args, pip over the host network, the CA bundle as a secret
#   4. config    `python -m ddpm config` in the container
#   5. run       the default command with DDPM_PROFILE=smoke and no network: the executed notebook, figures and
#                checkpoints must land in the mounted folders, owned by the image's user
#   6. lab       JupyterLab on a published port, its page loaded once in headless Chromium (lab.png)
#   7. size      the image's size and its largest layers
#
# Settings (environment):
#   DOCKER_TEST_OUT       where logs and evidence go (outputs/docker-test)
#   DOCKER_TEST_BASE      use this base image instead of bootstrapping one (e.g. debian:bookworm-slim where pulls work)
#   DOCKER_TEST_SUITE     Debian suite of the stand-in (bookworm: Python 3.11; trixie: Python 3.13)
#   DEBIAN_MIRROR         mirror for debootstrap (http://deb.debian.org/debian)
#   DOCKER_TEST_IMAGE     tag of the built image (ddpm-flowers:standin)
#   DOCKER_TEST_UID/GID   the image user's ids (yours; 1234 when run as root, so a wrong owner cannot pass unseen)
#   DOCKER_TEST_PORT      host port for the lab check (18888)
#   DOCKER_TEST_SKIP_OK=1 exit 0 after one "SKIPPED: why" line when no Docker engine can be set up (CI does this)
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${DOCKER_TEST_SUITE:-bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
BASE=${DOCKER_TEST_BASE:-ddpm-standin:$SUITE}
IMAGE=${DOCKER_TEST_IMAGE:-ddpm-flowers:standin}
PORT=${DOCKER_TEST_PORT:-18888}
OUT=${DOCKER_TEST_OUT:-$PWD/outputs/docker-test}
if [ "$(id -u)" = 0 ]; then default_uid=1234 default_gid=1234; else default_uid=$(id -u) default_gid=$(id -g); fi
TEST_UID=${DOCKER_TEST_UID:-$default_uid}
TEST_GID=${DOCKER_TEST_GID:-$default_gid}
LAB_CONTAINER=ddpm-docker-test-lab-$$
DOCKER=docker

rm -rf "$OUT"
mkdir -p "$OUT"
SUMMARY=$OUT/summary.txt
: >"$SUMMARY"

STEPS=7 PASSED=0 STEP_NAME=setup  # steps: engine base build config run lab size
say() { echo "docker-test: $*" | tee -a "$SUMMARY"; }
fail() {
    say "FAILED $STEP_NAME: $*"
    say "$PASSED passed, 1 failed, $((STEPS - PASSED - 1)) skipped"
    exit 1
}
skip() {
    say "SKIPPED: $* (the image was not built or run)"
    say "0 passed, 0 failed, $STEPS skipped"
    if [ "${DOCKER_TEST_SKIP_OK:-0}" = 1 ]; then exit 0; fi
    exit 1
}
is_root() { [ "$(id -u)" = 0 ]; }
step_start() { STEP_NAME=$1; STEP_T0=$SECONDS; }
step_done() { PASSED=$((PASSED + 1)); say "ok   $STEP_NAME ($((SECONDS - STEP_T0)) s)${1:+: $1}"; }

# Debian packages this script needs, installed only when missing and only as root.
apt_install() {
    local missing=()
    for pair in "$@"; do command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}"); done
    [ ${#missing[@]} = 0 ] && return 0
    is_root && command -v apt-get >/dev/null || return 1
    apt-get update -q >>"$OUT/apt.log" 2>&1 || return 1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$OUT/apt.log" 2>&1
}

# A CLI that builds with BuildKit (the Dockerfile mounts a build secret): Docker >= 23 needs the buildx plugin,
# older clients (Debian 12's docker.io is 20.10) have BuildKit built in behind DOCKER_BUILDKIT=1.
pick_buildkit_cli() {
    local cli major
    for cli in docker /usr/bin/docker; do
        command -v "$cli" >/dev/null 2>&1 || continue
        "$cli" buildx version >/dev/null 2>&1 && { DOCKER=$cli; return 0; }
        major=$("$cli" version --format '{{.Client.Version}}' 2>/dev/null | cut -d. -f1)
        [ -n "$major" ] && [ "$major" -lt 23 ] && { DOCKER=$cli; return 0; }
    done
    return 1
}

ensure_engine() {
    step_start engine
    if ! docker info >/dev/null 2>&1; then
        is_root || skip "no Docker daemon is running, and only root may install or start one"
        apt_install docker=docker.io dockerd=docker.io || skip "docker.io cannot be installed (see $OUT/apt.log)"
        setsid dockerd >"$OUT/dockerd.log" 2>&1 </dev/null &
        for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || skip "dockerd did not start: $(tail -n 1 "$OUT/dockerd.log")"
    fi
    pick_buildkit_cli || fail "no Docker CLI here builds with BuildKit: install the docker-buildx plugin"
    step_done "$($DOCKER version --format 'client {{.Client.Version}}, server {{.Server.Version}}') ($DOCKER)"
}

ensure_base() {
    step_start base
    if [ -n "${DOCKER_TEST_BASE:-}" ]; then
        $DOCKER image inspect "$BASE" >/dev/null 2>&1 || $DOCKER pull "$BASE" >"$OUT/pull.log" 2>&1 \
            || fail "cannot pull DOCKER_TEST_BASE=$BASE (see $OUT/pull.log)"
        step_done "$BASE (given)"
        return
    fi
    if $DOCKER image inspect "$BASE" >/dev/null 2>&1; then
        step_done "$BASE (bootstrapped earlier)"
        return
    fi
    is_root || fail "debootstrap needs root: run as root, or set DOCKER_TEST_BASE to a Debian-family image you have"
    apt_install debootstrap=debootstrap || fail "cannot install debootstrap (see $OUT/apt.log)"
    local rootfs
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase "$SUITE" "$rootfs" "$MIRROR" >"$OUT/debootstrap.log" 2>&1 \
        || { rm -rf "$rootfs"; fail "debootstrap $SUITE from $MIRROR (see $OUT/debootstrap.log)"; }
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | $DOCKER import --change 'CMD ["bash"]' - "$BASE" >/dev/null
    rm -rf "$rootfs"
    local size
    size=$($DOCKER image inspect -f '{{.Size}}' "$BASE" | numfmt --to=si)
    step_done "$BASE: debootstrap --variant=minbase $SUITE, ${size}B"
}

build_image() {
    step_start build
    # The machine's CA bundle reaches pip as a build secret, never a layer (a TLS-inspecting proxy needs it).
    local secret=() ca=${PIP_CERT:-${SSL_CERT_FILE:-}}
    [ -n "$ca" ] && [ -s "$ca" ] && secret=(--secret "id=pip_cert,src=$ca")
    local previous
    previous=$($DOCKER image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    DOCKER_BUILDKIT=1 $DOCKER build --progress=plain --network host "${secret[@]}" \
        --build-arg "BASE_IMAGE=$BASE" --build-arg "UID=$TEST_UID" --build-arg "GID=$TEST_GID" \
        -t "$IMAGE" . >"$OUT/build.log" 2>&1 || fail "docker build (see $OUT/build.log)"
    # A rebuilt image leaves the last one untagged, and BuildKit's cache keeps its layers: drop both (dangling cache
    # only, so the new image's layers stay cached), or every rebuild keeps another 7 GB on disk.
    if [ -n "$previous" ] && [ "$previous" != "$($DOCKER image inspect -f '{{.Id}}' "$IMAGE")" ]; then
        $DOCKER rmi "$previous" >/dev/null 2>&1 || true
        $DOCKER builder prune -f >/dev/null 2>&1 || true
    fi
    step_done "$IMAGE, BASE_IMAGE=$BASE, UID=$TEST_UID GID=$TEST_GID"
}

check_config() {
    step_start config
    $DOCKER run --rm --network none "$IMAGE" python -m ddpm config >"$OUT/config.json" 2>"$OUT/config.err" \
        || fail "python -m ddpm config (see $OUT/config.err)"
    grep -q '"profile": "gpu"' "$OUT/config.json" || fail "python -m ddpm config did not print the gpu profile"
    step_done "$($DOCKER run --rm --network none "$IMAGE" python --version) in the image, profile gpu by default"
}

# The README's `make docker-run`, less --gpus: fresh mounted folders owned by the image user, no network at all.
check_run() {
    step_start run
    local mounts=$OUT/mounts
    mkdir -p "$mounts/figures" "$mounts/runs" "$mounts/outputs"
    if is_root; then chown -R "$TEST_UID:$TEST_GID" "$mounts"; fi
    $DOCKER run --rm --network none --shm-size=2g -e DDPM_PROFILE=smoke \
        -v "$mounts/figures:/app/figures" -v "$mounts/runs:/app/runs" -v "$mounts/outputs:/app/outputs" \
        "$IMAGE" >"$OUT/run.log" 2>&1 || fail "the default run command (see $OUT/run.log)"
    local notebook=$mounts/outputs/solution.executed.ipynb
    [ -s "$notebook" ] || fail "no executed notebook at $notebook"
    # Every code cell ran and none raised: read with the image's own nbformat, so the host needs no Python packages.
    $DOCKER run --rm --network none -v "$mounts/outputs:/check:ro" "$IMAGE" python -c '
import sys, nbformat
nb = nbformat.read("/check/solution.executed.ipynb", as_version=4)
code = [c for c in nb.cells if c.cell_type == "code"]
unrun = [i for i, c in enumerate(code) if c.get("execution_count") is None]
errors = [o.get("ename") for c in code for o in c.get("outputs", []) if o.get("output_type") == "error"]
if unrun or errors:
    sys.exit(f"code cells not executed: {unrun}, errors: {errors}")
print(len(code))' >"$OUT/notebook-check.txt" 2>&1 || fail "executed notebook: $(tail -n 1 "$OUT/notebook-check.txt")"
    local figures checkpoints strangers
    figures=$(find "$mounts/figures" -type f -name '*.png' | wc -l)
    checkpoints=$(find "$mounts/runs" -type f -name '*.pt' | wc -l)
    [ "$figures" -gt 0 ] || fail "no figures in the mounted figures/"
    [ "$checkpoints" -gt 0 ] || fail "no checkpoints in the mounted runs/"
    strangers=$(find "$mounts" \( ! -uid "$TEST_UID" -o ! -gid "$TEST_GID" \) -printf '%u:%g %p\n' | head -n 5)
    [ -z "$strangers" ] || fail "files in the mounts not owned by $TEST_UID:$TEST_GID: $strangers"
    cp "$notebook" "$OUT/solution.executed.ipynb"
    step_done "$(cat "$OUT/notebook-check.txt") code cells ran offline; $figures PNGs and $checkpoints checkpoints \
in the mounts, all owned by $TEST_UID:$TEST_GID"
}

stop_lab() { $DOCKER rm -f "$LAB_CONTAINER" >/dev/null 2>&1 || true; }

check_lab() {
    step_start lab
    apt_install chromium=chromium || fail "the lab screenshot needs headless Chromium (apt-get install chromium)"
    trap stop_lab EXIT
    $DOCKER run -d --name "$LAB_CONTAINER" -p "127.0.0.1:$PORT:8888" "$IMAGE" lab >/dev/null
    local token="" url
    for _ in $(seq 90); do
        token=$($DOCKER logs "$LAB_CONTAINER" 2>&1 | grep -o 'token=[0-9a-f]*' | head -n 1 || true)
        [ -n "$token" ] && curl -fsS "http://127.0.0.1:$PORT/api/status?$token" >"$OUT/lab-status.json" 2>/dev/null \
            && break
        sleep 1
    done
    $DOCKER logs "$LAB_CONTAINER" >"$OUT/lab.log" 2>&1
    [ -s "$OUT/lab-status.json" ] || fail "JupyterLab did not answer on port $PORT (see $OUT/lab.log)"
    url="http://127.0.0.1:$PORT/lab/tree/solution.ipynb?$token"
    local browser=(chromium --headless --no-sandbox --disable-gpu --hide-scrollbars "--window-size=1400,900"
        --virtual-time-budget=30000)
    "${browser[@]}" --screenshot="$OUT/lab.png" "$url" >"$OUT/chromium.log" 2>&1 || fail "chromium screenshot"
    "${browser[@]}" --dump-dom "$url" >"$OUT/lab-dom.html" 2>>"$OUT/chromium.log" || fail "chromium --dump-dom"
    # The page is JupyterLab's JavaScript application, not an error page: it rendered the opened notebook.
    grep -q 'jp-Notebook' "$OUT/lab-dom.html" || fail "JupyterLab did not render solution.ipynb (see $OUT/lab-dom.html)"
    stop_lab
    trap - EXIT
    step_done "JupyterLab answered on 127.0.0.1:$PORT and rendered solution.ipynb: $OUT/lab.png"
}

report_size() {
    step_start size
    local size
    size=$($DOCKER image inspect -f '{{.Size}}' "$IMAGE")
    $DOCKER history --format '{{.Size}}\t{{.CreatedBy}}' "$IMAGE" | cut -c 1-120 >"$OUT/layers.txt"
    step_done "$IMAGE is $(numfmt --to=si "$size")B ($size bytes); layers in $OUT/layers.txt"
}

T0=$SECONDS
ensure_engine
ensure_base
build_image
check_config
check_run
check_lab
report_size
say "built $IMAGE on $BASE and ran config, the smoke notebook and lab in $((SECONDS - T0)) s"
say "$PASSED passed, 0 failed"
