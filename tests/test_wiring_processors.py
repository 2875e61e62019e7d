"""The wiring's Processors: which models jobs may use, one model's provision never holding back
another's jobs, and one bound on whisper calls per process.

Built from `Settings(...)`, no broker. The HTTP server is the test's own, on 127.0.0.1.
"""

import dataclasses
import http.server
import shutil
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR

from worker import wiring
from worker.config import Settings
from worker.engine.catalog import model_names, variants
from worker.engine.guard import GUARD_OFF, GuardOptions
from worker.engine.models import Sidecar
from worker.engine.transcriber import SAMPLE_RATE
from worker.errors import ModelNotAllowed, ModelUnavailable, UnknownModel

WAIT_SECONDS = 300  # a deadline for things that take a second or two, on a machine shared with others


class _BlockingHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET 404, but only once the test sets `release`; records what was asked."""

    requests: list[str]
    requested: threading.Event
    release: threading.Event

    def do_GET(self) -> None:
        self.requests.append(self.path)
        self.requested.set()
        self.release.wait(WAIT_SECONDS)
        self.send_error(404)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def model_server() -> Iterator[tuple[str, type[_BlockingHandler]]]:
    handler = type(
        "Handler",
        (_BlockingHandler,),
        {"requests": [], "requested": threading.Event(), "release": threading.Event()},
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    handler.release.set()
    server.shutdown()
    server.server_close()


def settings(models_dir: Path, **overrides) -> Settings:
    url = overrides.pop("whisper_download_url", "")
    return Settings(
        _env_file=None,
        whisper_models_dir=models_dir,
        whisper_download_url=url,
        allowed_private_origins=url,  # the test's own server on 127.0.0.1
        whisper_download_timeout_seconds=WAIT_SECONDS,
        **overrides,
    )


@pytest.fixture
def tiny_en_dir(tiny_en_path, tmp_path) -> Path:
    """A models directory holding a valid ggml-tiny.en.bin (what tiny.en-f16 loads), copied."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copyfile(tiny_en_path, models / tiny_en_path.name)
    shutil.copyfile(Sidecar.path_for(tiny_en_path), Sidecar.path_for(models / tiny_en_path.name))
    return models


# --- which models jobs may use -----------------------------------------------------------------


def test_a_model_outside_the_allowed_ones_is_refused_before_any_download(tmp_path, model_server):
    url, handler = model_server
    processors = wiring.Processors(settings(tmp_path / "models", whisper_download_url=url), tmp_path)

    with pytest.raises(ModelNotAllowed, match=r"'large-v3' is not allowed.*allowed: .*tiny\.en.*ALLOWED_MODELS"):
        processors("large-v3")
    with pytest.raises(UnknownModel, match="'huge-v9'"):
        processors("huge-v9")

    assert handler.requests == []
    assert not list((tmp_path / "models").glob("ggml-*"))
    # By default the default model's variants are allowed (and the installed packages' models).
    assert set(variants("tiny.en")) <= processors.allowed and "large-v3" not in processors.allowed


def test_the_allowed_models_are_computed_once_and_a_typo_fails_at_start_up(tmp_path, log_messages):
    chosen = settings(tmp_path / "models", allowed_models="base,small")
    assert wiring.allowed_models(chosen) == ("base", "base-q4_0", "small", "tiny.en", "tiny.en-q8_0")
    assert wiring.allowed_models(chosen) is wiring.allowed_models(chosen)
    assert len([m for _, m in log_messages if m.startswith("Jobs may use models")]) == 1

    assert wiring.allowed_models(settings(tmp_path / "models", allowed_models="*")) == tuple(model_names())
    with pytest.raises(UnknownModel, match="ALLOWED_MODELS names unknown model.*'smal'"):
        wiring.Processors(settings(tmp_path / "other", allowed_models="base,smal"), tmp_path)


# --- one model being provided holds back only its own jobs -------------------------------------


def test_a_model_being_downloaded_holds_back_no_job_for_another_model(tiny_en_dir, tmp_path, model_server, jfk):
    url, handler = model_server
    processors = wiring.Processors(
        settings(tiny_en_dir, whisper_download_url=url, allowed_models="small,tiny.en-f16"), tmp_path
    )

    with ThreadPoolExecutor(max_workers=2) as pool:
        small = pool.submit(processors, "small")
        try:
            # Given: small's download has started, and the server holds it.
            assert handler.requested.wait(WAIT_SECONDS)
            # When: a job for tiny.en-f16 (on disk) arrives, it gets its processor and transcribes.
            tiny = pool.submit(processors, "tiny.en-f16").result(timeout=WAIT_SECONDS)
            text = tiny.transcriber.transcribe(jfk[: 5 * SAMPLE_RATE], n_threads=1).text
            # Then: all that while, small was still downloading.
            assert not small.done()
        finally:
            handler.release.set()
        with pytest.raises(ModelUnavailable, match="small"):
            small.result(timeout=WAIT_SECONDS)

    assert "fellow americans" in text.lower()
    assert handler.requests == ["/ggml-small.bin"]


# --- one bound on whisper calls per process ----------------------------------------------------


def test_whisper_calls_in_progress_never_exceed_the_stated_number_across_pools_and_models(tmp_path, jfk):
    processors = wiring.Processors(settings(MODELS_DIR, max_parallel_workers=2, concurrent_jobs=1), tmp_path)
    cap = processors.whisper_calls
    assert cap == 2  # docs/architecture.md: MAX_PARALLEL_WORKERS x CONCURRENT_JOBS
    # Unquantized files: here (a CPU with AMX) libwhisper crashes on quantized ones, unrelated to this.
    tiny, base = (processors(m).transcriber for m in ("tiny.en-f16", "base-f16"))
    assert base.multilingual
    short = jfk[: 4 * SAMPLE_RATE]  # a fitted encoder context: the fitted states' pool
    long = np.tile(jfk, 3)[: 26 * SAMPLE_RATE]  # over ~24.3 s: the full context, the other pool
    calls = [
        *(lambda t=t: t.transcribe(short, n_threads=1, language="en") for t in (tiny, base) * 3),
        *(lambda t=t: t.transcribe(long, n_threads=1, language="en") for t in (tiny, tiny, base)),
        lambda: base.detect_language(short, n_threads=1),
        lambda: base.transcribe(short, n_threads=1),  # detects the language, then transcribes
    ]
    start = threading.Barrier(len(calls))

    def run(call):
        start.wait()
        return call()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:  # 5.5 times as many threads as the cap
        results = list(pool.map(run, calls))

    assert processors.calls.peak == cap
    assert processors.calls.in_progress == 0
    assert tiny.calls is base.calls is processors.calls
    assert results[-2][0] == "en" and "fellow" in results[-1].text.lower()


# --- the hallucination guard's settings ---------------------------------------------------------


def test_each_guard_rule_runs_when_the_master_switch_and_its_own_are_on(tmp_path):
    assert wiring.guard_options(settings(tmp_path)) == GuardOptions()
    assert wiring.guard_options(settings(tmp_path, hallucination_guard=False, guard_retry=True)) == GUARD_OFF
    alone = wiring.guard_options(settings(tmp_path, guard_retry=False, guard_strip_nonspeech=False))
    assert alone == dataclasses.replace(GUARD_OFF, drop_no_speech=True)
    off = wiring.processor(
        settings(MODELS_DIR, hallucination_guard=False), "tiny.en-f16", wiring.pipeline_options(settings(MODELS_DIR))
    )
    assert off.transcriber.guard == GUARD_OFF  # what the transcriber applies
