"""The speaker encoder: resemblyzer's GE2E model in numpy, against what resemblyzer itself computes.

tests/fixtures/voices/resemblyzer.npz was made by resemblyzer 0.1.4 with torch, in a venv of its own
(tests/fixtures/voices/make_reference.py says how), from the same clips of ../shared/audio decoded the same way.
"""

import hashlib
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import MODELS_DIR, ROOT
from threadpoolctl import threadpool_info

from worker.engine.catalog import VOICE_MODEL, model_names
from worker.engine.models import ModelDownloader, Sidecar
from worker.engine.voices import (
    EMBEDDING_SIZE,
    HOP,
    PARTIAL_FRAMES,
    WINDOW_SAMPLES,
    SpeakerEncoder,
    VoiceModelError,
    mel_filterbank,
    mel_spectrogram,
    normalize_volume,
    partial_starts,
    read_weights,
)
from worker.media.audio import decode_audio

REFERENCE = ROOT / "tests" / "fixtures" / "voices" / "resemblyzer.npz"
# Who speaks in each reference clip (../shared/audio/MANIFEST.tsv).
SPEAKERS = {
    "ls_test-clean_1089-134686-0000.flac": "LibriSpeech 1089",
    "ls_test-clean_1089-134691-0001.flac": "LibriSpeech 1089",
    "ls_test-clean_1089-134691-0000.flac": "LibriSpeech 1089",
    "ls_dev-clean_1272-128104-0000_leopard.wav": "LibriSpeech 1272",
    "jfk_inaugural_1961.flac": "JFK",
    "ljspeech_LJ050-0131.wav": "LJ Speech",
    "ljspeech_LJ001-0009.flac": "LJ Speech",
    "librivox_sonnet001_first9s_ogg.ogg": "LibriVox sonnets",
}


@pytest.fixture(scope="module")
def reference() -> dict[str, np.ndarray]:
    with np.load(REFERENCE) as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def encoder() -> SpeakerEncoder:
    return SpeakerEncoder(ModelDownloader(MODELS_DIR, download_url="").ensure_model_exists(VOICE_MODEL.name))


@pytest.fixture(scope="module")
def clips(audio_dir, reference) -> dict[str, np.ndarray]:
    return {str(name): decode_audio(audio_dir / str(name)) for name in reference["names"]}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


# --- the weights file ---


def test_the_voice_model_comes_from_its_package_offline_checked_and_recorded(tmp_path, log_messages):
    downloader = ModelDownloader(tmp_path, download_url="")
    path = downloader.ensure_model_exists(VOICE_MODEL.name)
    assert path == tmp_path / "resemblyzer-ge2e-0.1.4.pt"
    sidecar = Sidecar.read(path)
    assert sidecar.sha256 == VOICE_MODEL.sha256 and sidecar.size == path.stat().st_size
    assert "resemblyzer 0.1.4" in sidecar.source
    # Validated once per process: a second call is served from memory.
    assert downloader.ensure_model_exists(VOICE_MODEL.name) == path
    assert sum("Ensuring model exists: resemblyzer-ge2e" in m for _, m in log_messages) == 1


def test_the_voice_model_is_not_a_model_a_job_may_name():
    assert VOICE_MODEL.name not in model_names()


def test_the_encoder_loads_and_embeds_without_torch_or_resemblyzer_code(encoder):
    # A child process: nothing else in this session can have imported torch for it.
    script = (
        "import sys; import numpy as np; from worker.engine.voices import SpeakerEncoder; "
        f"SpeakerEncoder({str(encoder.model_path)!r}).embed(np.zeros(16000, np.float32)); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'resemblyzer', 'librosa')))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_the_weights_have_the_encoder_s_shapes(encoder):
    weights = read_weights(encoder.model_path)
    assert weights["lstm.weight_ih_l0"].shape == (1024, 40)
    assert weights["lstm.weight_hh_l2"].shape == (1024, 256)
    assert weights["linear.weight"].shape == (256, 256)
    assert all(w.dtype == np.float32 and np.isfinite(w).all() for w in weights.values())


def legacy_checkpoint(path: Path, payload: object) -> Path:
    """A file in torch's legacy format whose main pickle is `payload`'s."""
    header = (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True})
    path.write_bytes(b"".join(pickle.dumps(p, protocol=2) for p in (*header, payload, [])))
    return path


class RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_checkpoint_naming_any_other_global_is_refused_before_it_runs(tmp_path):
    marker = tmp_path / "ran"
    path = legacy_checkpoint(tmp_path / "evil.pt", {"model_state": RunsCode(marker)})
    with pytest.raises(VoiceModelError, match="refused"):
        read_weights(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: b"not a checkpoint" + data, id="not-a-pickle"),
    ],
)
def test_a_damaged_checkpoint_is_refused(tmp_path, encoder, damage):
    path = tmp_path / "damaged.pt"
    path.write_bytes(damage(encoder.model_path.read_bytes()))
    with pytest.raises(VoiceModelError):
        read_weights(path)


def test_a_checkpoint_without_the_encoder_s_tensors_is_refused(tmp_path):
    with pytest.raises(VoiceModelError, match="not the GE2E encoder"):
        read_weights(legacy_checkpoint(tmp_path / "other.pt", {"model_state": {}}))


# --- against resemblyzer ---


def test_the_mel_filterbank_is_librosa_s(reference):
    expected = reference["filterbank"]
    assert mel_filterbank().shape == expected.shape == (40, 201)
    np.testing.assert_allclose(mel_filterbank(), expected, rtol=0, atol=1e-6 * expected.max())


def test_the_mel_spectrogram_is_resemblyzer_s(reference, clips):
    samples = normalize_volume(clips[str(reference["detailed"])])
    ours, expected = mel_spectrogram(samples), reference["mel"]
    assert ours.shape == expected.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_partial_windows_are_resemblyzer_s(reference, clips, encoder):
    samples = normalize_volume(clips[str(reference["detailed"])])
    starts = partial_starts(samples.size)
    np.testing.assert_array_equal(starts, reference["partial_starts"])
    mel = mel_spectrogram(np.pad(samples, (0, starts[-1] + WINDOW_SAMPLES - samples.size)))
    mels = np.stack([mel[f : f + PARTIAL_FRAMES] for f in starts // HOP], axis=1)
    np.testing.assert_allclose(encoder.embed_mels(mels), reference["partials"], rtol=0, atol=1e-5)


def test_embeddings_are_resemblyzer_s(reference, clips, encoder):
    for name, sha256, expected in zip(
        reference["names"], reference["samples_sha256"], reference["embeddings"], strict=True
    ):
        samples = clips[str(name)]
        # The reference's input, decoded by another ffmpeg, may differ by a rounding: then a looser bound.
        same_input = hashlib.sha256(samples.astype("<f4").tobytes()).hexdigest() == sha256
        ours = encoder.embed(samples)
        assert ours.shape == (EMBEDDING_SIZE,) and ours.dtype == np.float32
        assert abs(np.linalg.norm(ours) - 1) < 1e-5
        assert cosine(ours, expected) > (0.99999 if same_input else 0.999), name
        assert np.abs(ours - expected).max() < (1e-4 if same_input else 1e-2), name


# --- speakers ---


def test_the_same_speaker_s_utterances_are_closer_than_different_speakers(clips, encoder):
    names = list(SPEAKERS)
    embeddings = {name: encoder.embed(clips[name]) for name in names}
    same, different = [], []
    for k, a in enumerate(names):
        for b in names[k + 1 :]:
            (same if SPEAKERS[a] == SPEAKERS[b] else different).append(cosine(embeddings[a], embeddings[b]))
    assert len(same) == 4 and len(different) == 24
    # Measured: same speaker 0.81-0.89, different speakers 0.42-0.68.
    assert min(same) > max(different) + 0.05


# --- determinism, threads, edges ---


def test_embeddings_are_deterministic(clips, encoder):
    samples = clips["jfk_inaugural_1961.flac"]
    np.testing.assert_array_equal(encoder.embed(samples), encoder.embed(samples))


def test_windows_embed_each_as_alone_whatever_their_length_and_batch(clips, encoder):
    samples = clips["jfk_inaugural_1961.flac"]
    # What worker.media.turns cuts (1.6 s, 0.8 s apart, a short region's own length) and a longer clip;
    # more than one batch of windows, read from a generator.
    spans = [(s, s + WINDOW_SAMPLES) for s in range(0, 150_000, 1600)] + [(1000, 9000), (0, 60_000)]
    batch = encoder.embed_windows(samples[s:e] for s, e in spans)
    assert batch.shape == (len(spans), EMBEDDING_SIZE)
    for k in (10, len(spans) - 2, len(spans) - 1):
        s, e = spans[k]
        np.testing.assert_allclose(batch[k], encoder.embed(samples[s:e]), rtol=0, atol=1e-5)


def test_a_clip_of_more_partial_windows_than_a_batch_is_the_mean_of_them_all(clips, encoder):
    samples = normalize_volume(np.concatenate(list(clips.values())))  # 60 s: 77 partial windows, batches of 64
    starts = partial_starts(samples.size)
    assert starts.size > 64
    mel = mel_spectrogram(np.pad(samples, (0, max(0, starts[-1] + WINDOW_SAMPLES - samples.size))))
    partials = encoder.embed_mels(np.stack([mel[f : f + PARTIAL_FRAMES] for f in starts // HOP], axis=1))
    expected = partials.mean(axis=0) / np.linalg.norm(partials.mean(axis=0))
    np.testing.assert_allclose(encoder.embed(samples), expected, rtol=0, atol=1e-5)


def test_two_threads_get_what_one_thread_gets(clips, encoder):
    inputs = {name: clips[name] for name in ("jfk_inaugural_1961.flac", "ljspeech_LJ050-0131.wav")}
    expected = {name: encoder.embed(samples) for name, samples in inputs.items()}
    results: dict[str, list[np.ndarray]] = {name: [] for name in inputs}
    start = threading.Barrier(len(inputs))

    def embed(name: str) -> None:
        start.wait()
        results[name].extend(encoder.embed(inputs[name]) for _ in range(3))

    threads = [threading.Thread(target=embed, args=(name,)) for name in inputs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for name, embeddings in results.items():
        assert len(embeddings) == 3
        for embedding in embeddings:
            np.testing.assert_array_equal(embedding, expected[name])


def test_the_encoder_runs_numpy_s_blas_on_one_thread(encoder):
    assert {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"} == {1}


def test_silence_and_short_clips_give_a_unit_vector(encoder):
    # resemblyzer's normalize_volume turns silence into NaN; ours leaves silence as it is.
    for samples in (np.zeros(16_000, np.float32), np.zeros(0, np.float32), np.full(100, 0.01, np.float32)):
        embedding = encoder.embed(samples)
        assert np.isfinite(embedding).all() and abs(np.linalg.norm(embedding) - 1) < 1e-5


def test_quiet_speech_is_raised_to_the_target_volume_and_loud_speech_kept(clips):
    samples = clips["jfk_inaugural_1961.flac"]
    quiet = normalize_volume(samples * 0.01)
    rms_dbfs = 20 * np.log10(np.sqrt(np.mean(np.square(quiet, dtype=np.float64))))
    assert abs(rms_dbfs - -30) < 0.01
    assert normalize_volume(samples) is samples or np.array_equal(normalize_volume(samples), samples)


def test_bad_input_is_refused(encoder):
    with pytest.raises(ValueError, match="mono"):
        encoder.embed(np.zeros((2, 16_000), np.float32))
    assert encoder.embed_windows([]).shape == (0, EMBEDDING_SIZE)
