"""Load: 200 short jobs of real speech through 2 worker processes; every job gets exactly one result."""

import shutil
import time

import pytest
from harness import completed_ids

from .conftest import LEDGER

# Real clips of 2 to 11 s from ../shared/audio, in five formats.
CLIPS = [
    "jfk_inaugural_1961.flac",
    "jfk_inaugural_1961_whispercpp.mp3",
    "ljspeech_LJ001-0009.flac",
    "ljspeech_LJ001-0010.mp3",
    "ljspeech_LJ050-0131.wav",
    "ls_dev-clean_1272-128104-0000_leopard.wav",
    "ls_test-clean_1089-134686-0000.flac",
    "ls_test-clean_1089-134686-0001.flac",
    "ls_test-clean_1089-134691-0000.flac",
    "ls_test-clean_1089-134691-0001.flac",
    "librivox_sonnet001_first9s_ogg.ogg",
    "librivox_sonnet001_first9s_m4a.m4a",
    "librivox_sonnet001_first9s_webm.webm",
]
JOBS = 200
WORKERS = 2


@pytest.mark.slow
def test_200_jobs_through_2_workers_each_get_exactly_one_result(service, audio_dir):
    for clip in CLIPS:
        shutil.copyfile(audio_dir / clip, service.input_dir / clip)
    # Two processes on two cores: one whisper thread each (threads x concurrent calls <= cores).
    workers = [service.start_worker(whisper_threads=1, max_parallel_workers=1) for _ in range(WORKERS)]
    for worker in workers:
        worker.wait_for("Consuming")
    client = service.client()
    expected = {f"load-{i:03d}" for i in range(JOBS)}

    started = time.monotonic()
    for i in range(JOBS):
        client.enqueue({"job_id": f"load-{i:03d}", "audio": {"path": CLIPS[i % len(CLIPS)]}, "formats": ["txt"]})
    results = client.results(
        lambda rs: len(rs) >= JOBS, timeout=1800, alive=lambda: [w.wait_for("Consuming") for w in workers]
    )
    elapsed = time.monotonic() - started
    late = client.drain(service.topology.results_queue, settle_seconds=2)  # nothing more may arrive

    completed = completed_ids(results) + [p.correlation_id for p, _ in late]
    LEDGER.account(expected, completed)
    LEDGER.jobs_under_load = JOBS
    LEDGER.load_jobs_per_minute = JOBS / elapsed * 60
    print(f"\n{JOBS} jobs through {WORKERS} workers in {elapsed:.1f} s: {JOBS / elapsed * 60:.1f} jobs/min")
    assert sorted(completed) == sorted(expected)  # none lost, none duplicated, none failed
    assert all(r.text for r in results)
    assert client.depth(service.topology.jobs_queue) == 0
    assert client.depth(service.topology.dead_letter_queue) == 0
    assert all(w.log().count("Processing job") > JOBS // 10 for w in workers)  # both took a share
    client.close()
