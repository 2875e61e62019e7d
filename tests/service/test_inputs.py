"""A job's known speakers' clips: fetched under the job's rules, decoded and checked (typed errors)."""

import shutil

import numpy as np
import pytest
import soundfile

from worker.egress import PUBLIC_ONLY
from worker.errors import InputNotAllowed, InvalidReference
from worker.media.audio import SAMPLE_RATE, decode_audio
from worker.messages import Job
from worker.service.inputs import Sources

CLIP = "ls_test-clean_1089-134686-0000.flac"  # 10.4 s of one reader


@pytest.fixture
def sources(tmp_path) -> Sources:
    return Sources(tmp_path, PUBLIC_ONLY, max_bytes=2**20 * 10, timeout_seconds=5.0)


def job(*references: dict) -> Job:
    known = [{"name": f"speaker {k}", "audio": audio} for k, audio in enumerate(references)]
    return Job(job_id="j1", audio={"path": "a.wav"}, diarize="speakers", known_speakers=known)


def write(path, samples) -> dict:
    soundfile.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
    return {"path": path.name}


def test_a_clip_in_input_dir_is_decoded_and_checked(sources, tmp_path, audio_dir):
    speech = decode_audio(audio_dir / CLIP)
    found = sources.known_voices(job(write(tmp_path / "ann.wav", speech[: 5 * SAMPLE_RATE])), tmp_path)
    assert [v.name for v in found] == ["speaker 0"] and found[0].samples.size == 5 * SAMPLE_RATE


def test_a_clip_that_cannot_name_anyone_is_refused_with_its_reason(sources, tmp_path, audio_dir):
    speech = decode_audio(audio_dir / CLIP)
    with pytest.raises(InvalidReference, match="'speaker 0'.*1.0 s"):
        sources.known_voices(job(write(tmp_path / "short.wav", speech[:SAMPLE_RATE])), tmp_path)
    shutil.copy(audio_dir / CLIP, tmp_path / "long.flac")  # 10.4 s: over 10 s
    with pytest.raises(InvalidReference, match="longer than the limit"):
        sources.known_voices(job({"path": "long.flac"}), tmp_path)
    (tmp_path / "text.wav").write_text("not audio at all\n" * 100)
    with pytest.raises(InvalidReference, match="speaker 0"):
        sources.known_voices(job({"path": "text.wav"}), tmp_path)
    with pytest.raises(InvalidReference, match="silent"):
        sources.known_voices(job(write(tmp_path / "quiet.wav", np.zeros(3 * SAMPLE_RATE, np.float32))), tmp_path)


def test_a_clip_is_fetched_under_the_jobs_rules(sources, tmp_path):
    with pytest.raises(InputNotAllowed):
        sources.known_voices(job({"path": "../outside.wav"}), tmp_path)
    with pytest.raises(InputNotAllowed):
        sources.known_voices(job({"url": "http://127.0.0.1:9/ann.wav"}), tmp_path)
