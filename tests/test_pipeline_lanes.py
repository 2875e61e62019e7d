"""The two lanes into the shared transcriber (worker/pipeline/lanes.py), on threads: no whisper needed."""

import threading
import time

from worker.pipeline import Lanes


def _start_bulk_call(lanes: Lanes, started: threading.Event) -> threading.Thread:
    def call() -> None:
        with lanes.turn("bulk"):
            started.set()

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread


def test_a_bulk_call_waits_while_an_interactive_job_runs_and_starts_when_it_ends():
    lanes = Lanes(bulk_max_wait_seconds=60)
    started = threading.Event()
    with lanes.job("interactive"):
        with lanes.turn("interactive"):  # the interactive job's own calls never wait
            pass
        thread = _start_bulk_call(lanes, started)
        assert not started.wait(0.5), "a bulk call started while an interactive job was running"
        assert lanes.bulk_waits == 1
    assert started.wait(5), "the bulk call did not start once the interactive job ended"
    thread.join(5)


def test_bulk_work_is_never_starved_by_the_interactive_lane():
    lanes = Lanes(bulk_max_wait_seconds=0.3)
    started = threading.Event()
    with lanes.job("interactive"):
        began = time.monotonic()
        _start_bulk_call(lanes, started).join(10)
        assert started.is_set() and time.monotonic() - began >= 0.3


def test_bulk_jobs_hold_nothing_back():
    lanes = Lanes()
    started = threading.Event()
    with lanes.job("bulk"):
        _start_bulk_call(lanes, started).join(5)
    assert started.is_set() and lanes.bulk_waits == 0 and lanes.interactive_jobs == 0
