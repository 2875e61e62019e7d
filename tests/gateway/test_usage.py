"""A tenant's jobs in progress (worker/gateway/usage.py's open_jobs), on a real SQLite job database."""

import time

from worker.gateway.store import JobStore
from worker.gateway.usage import UsageBook
from worker.messages import Result


def test_a_tenants_jobs_in_progress_are_bounded_released_by_their_result_and_expire(tmp_path):
    book = UsageBook(JobStore(f"sqlite:///{tmp_path / 'jobs.sqlite3'}").engine)
    later = time.time() + 600
    assert book.open_job("team", "async-1", 2, None) and book.open_job("team", "sync-1", 2, later)
    assert not book.open_job("team", "async-2", 2, None)  # two in progress: a third is refused
    assert book.open_job("other", "async-3", 2, None)  # each tenant its own

    book.charge("team", Result(job_id="sync-1", status="completed"))  # its result: no longer in progress
    assert book.open_job("team", "sync-2", 2, time.time() - 1)  # a request that can no longer be waiting
    assert book.open_job("team", "async-4", 2, None)  # ... holds no slot
    assert not book.open_job("team", "async-5", 2, None)

    book.close_job("async-4")  # never reached the broker
    assert book.open_job("team", "async-5", 2, None)
