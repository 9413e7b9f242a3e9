# syntax=docker/dockerfile:1
#
# canary-router image: the OpenAI-compatible canary router (`canary serve`) with
# llama-cpp-python and the two bundled GGUF models (SmolLM2-135M, Gemma-3-270M).
#
# CPU image (default; python:3.11-slim, portable AVX2 build of llama.cpp):
#
#   docker build -t canary-router .
#   docker run -p 8000:8000 -v canary-data:/data canary-router
#
# GPU image (llama.cpp built with CUDA). Build on a CUDA *devel* image (it has nvcc) and
# run on the matching *runtime* image (it has libcudart/libcublas, not the compiler):
#
#   docker build -t canary-router:cuda \
#     --build-arg LLAMA_CUDA=1 \
#     --build-arg BASE_IMAGE=nvidia/cuda:12.4.1-devel-ubuntu22.04 \
#     --build-arg RUNTIME_IMAGE=nvidia/cuda:12.4.1-runtime-ubuntu22.04 \
#     --build-arg LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=80;86;89;90" .
#   docker run --gpus all -p 8000:8000 -v canary-data:/data canary-router:cuda
#
#   (needs the NVIDIA Container Toolkit on the host; omit CMAKE_CUDA_ARCHITECTURES to build
#   for every architecture llama.cpp supports, which is slower. The CUDA images carry no
#   Python 3.11, so both stages install it from Ubuntu's archive; keep BASE_IMAGE and
#   RUNTIME_IMAGE on the same Ubuntu release so the wheels match the interpreter.)
#
# Needs BuildKit (the default builder since Docker 23) for the cache and bind mounts.

# Build stage image; python:3.11-slim, or a CUDA devel image when LLAMA_CUDA=1.
ARG BASE_IMAGE=python:3.11-slim
# Runtime stage image; defaults to BASE_IMAGE. Use the CUDA *runtime* image for GPU builds.
ARG RUNTIME_IMAGE=${BASE_IMAGE}


# ---------------------------------------------------------------------------------------
# build: wheels for the project and every dependency (llama-cpp-python compiled here)
# ---------------------------------------------------------------------------------------
FROM ${BASE_IMAGE} AS build

# 1: build llama-cpp-python with CUDA (-DGGML_CUDA=on); 0: CPU only.
ARG LLAMA_CUDA=0
# Extra CMake flags for llama.cpp. GGML_NATIVE=OFF keeps the image portable (AVX2 baseline)
# instead of tuning for the CPU of the build machine; pass -DGGML_NATIVE=ON to get that.
ARG LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF"

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Compilers for llama.cpp; Python 3.11 too where the base image has none (CUDA images).
RUN set -eux; \
    apt-get update; \
    packages="gcc g++ cmake"; \
    if ! command -v python3.11 >/dev/null 2>&1; then \
        packages="$packages python3.11 python3.11-venv python3.11-dev"; \
    fi; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3.11 -m venv /opt/build-venv; \
    /opt/build-venv/bin/pip install --no-cache-dir --upgrade pip wheel

WORKDIR /src

# Dependencies first, from pyproject.toml alone: editing the code does not rebuild
# llama-cpp-python (minutes), only a change of the dependency list does.
# pip's wheel cache ignores CMAKE_ARGS, so CPU and CUDA builds keep separate caches.
COPY pyproject.toml ./
RUN --mount=type=cache,target=/root/.cache \
    set -eux; \
    cmake_args="$LLAMA_CMAKE_ARGS"; \
    if [ "$LLAMA_CUDA" = "1" ]; then \
        command -v nvcc >/dev/null 2>&1 || { \
            echo "LLAMA_CUDA=1 needs a CUDA devel BASE_IMAGE (no nvcc in this one)" >&2; exit 1; }; \
        cmake_args="$cmake_args -DGGML_CUDA=on -DCMAKE_EXE_LINKER_FLAGS=-Wl,--allow-shlib-undefined"; \
    fi; \
    /opt/build-venv/bin/python -c "import tomllib; project = tomllib.load(open('pyproject.toml', 'rb'))['project']; print(*project['dependencies'], sep=chr(10))" > requirements.txt; \
    CMAKE_ARGS="$cmake_args" PIP_CACHE_DIR="/root/.cache/pip-cuda$LLAMA_CUDA" \
        /opt/build-venv/bin/pip wheel --wheel-dir /wheels -r requirements.txt

# Then the project itself (its dependencies are all in /wheels already).
COPY router ./router
COPY registry ./registry
COPY experiments ./experiments
COPY ui ./ui
COPY README.md ./
RUN /opt/build-venv/bin/pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .


# ---------------------------------------------------------------------------------------
# runtime: the wheels installed into a venv, run as an unprivileged user
# ---------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE} AS runtime

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/venv/bin:$PATH

# libgomp1: llama.cpp's OpenMP threads. Python 3.11 where the image has none (CUDA images).
RUN set -eux; \
    apt-get update; \
    packages="libgomp1 libstdc++6"; \
    if ! command -v python3.11 >/dev/null 2>&1; then \
        packages="$packages python3.11 python3.11-venv"; \
    fi; \
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $packages; \
    rm -rf /var/lib/apt/lists/*; \
    python3.11 -m venv /opt/venv

# Install from the build stage's wheels only (--no-index: nothing is fetched here). The
# bind mount keeps the wheels themselves out of the image's layers.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels canary-router

RUN set -eux; \
    groupadd --system --gid 10001 canary; \
    useradd --system --uid 10001 --gid canary --create-home --home-dir /home/canary \
        --shell /usr/sbin/nologin canary; \
    mkdir -p /data; \
    chown canary:canary /data

# /data: SQLite inference log (when DATABASE_URL is unset) and the assembled Gemma GGUF.
# A named volume inherits the canary ownership; a bind mount must be writable by uid 10001.
ENV CANARY_DATA_DIR=/data \
    CANARY_HOST=0.0.0.0 \
    CANARY_PORT=8000
VOLUME /data

USER canary
WORKDIR /home/canary
EXPOSE 8000

# No curl in the slim image: the venv's Python asks the liveness endpoint. The start
# period covers loading the models (and assembling Gemma into /data on first start).
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('CANARY_PORT', '8000'), timeout=4)" || exit 1

CMD ["canary", "serve"]
