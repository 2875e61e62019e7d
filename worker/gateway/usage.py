"""What each tenant used, by day (UTC): requests, jobs, failed jobs, seconds of audio; and its daily
audio quota (GATEWAY_KEYS_FILE's `audio_seconds_per_day`).

Kept in the job database (worker/gateway/store.py's), so that every gateway replica counts the same:
- `request_counts`: a tenant's requests per minute, every tenant's (the rate limit reads the current
  minute: worker/gateway/limits.py; GET /v1/usage adds a day's minutes up), kept USAGE_DAYS days;
- `usage_jobs`: one row per finished job, written when its result arrives (a sync request's, even when
  its client has gone; an async job's, with its record): its tenant, day, audio seconds, and whether
  it failed. Keyed by job id: a result delivered twice is counted once.

Each replica also exports what it counted on its /metrics (GATEWAY_METRICS_PORT), with a `tenant` label:
requests, finished jobs by status and their audio seconds (Prometheus sums the replicas; a tenant is a
name of the keys file, or `key-` and a digest for GATEWAY_API_KEYS: never a key).

A tenant's `max_concurrent_jobs` counts its jobs in progress (`open_jobs`: a row from the request that
sends a job to its result, whichever replica gets it; a synchronous job's row expires when its request
could no longer be waiting, so a replica that died loses no slot for long): one more is refused (429).
The check and the insert are one statement; on SQLite (one writer at a time) requests racing each other
cannot go over, on a server database they may by the number racing.

The quota is checked twice, before any transcription: a tenant with nothing left today is refused at
the gateway (429 insufficient_quota); otherwise the job carries what is left (`Job.quota_seconds`) and the
worker refuses longer audio once decoded (QuotaExceeded, answered as the same 429). The gateway never
decodes audio. Jobs of one tenant running at the same time are each checked against what was left when
they were sent: together they may go over the quota by what they hold.
"""

import datetime
import time

import sqlalchemy as sa
from prometheus_client import Counter

from worker.messages import Result

USAGE_DAYS = 35  # how long per-minute request counts are kept
_MINUTES_PER_DAY = 1440

_metadata = sa.MetaData()
_requests = sa.Table(
    "request_counts",
    _metadata,
    sa.Column("tenant", sa.String(64), primary_key=True),
    sa.Column("minute", sa.Integer, primary_key=True),  # epoch minutes
    sa.Column("count", sa.Integer, nullable=False),
)
_open = sa.Table(
    "open_jobs",
    _metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=True),  # None: until its result comes (an async job)
    sa.Index("open_jobs_by_tenant", "tenant"),
)
_jobs = sa.Table(
    "usage_jobs",
    _metadata,
    sa.Column("job_id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("day", sa.Integer, nullable=False),  # epoch days (UTC)
    sa.Column("audio_seconds", sa.Float, nullable=False),
    sa.Column("failed", sa.Boolean, nullable=False),
    sa.Index("usage_jobs_by_tenant", "tenant", "day"),
)


REQUESTS = Counter("transcription_gateway_requests_total", "API requests (/v1/) counted, by tenant", ["tenant"])
JOBS = Counter(
    "transcription_gateway_jobs_total", "Jobs finished (each once), by tenant and status", ["tenant", "status"]
)
AUDIO_SECONDS = Counter(
    "transcription_gateway_audio_seconds_total", "Seconds of audio in completed jobs, by tenant", ["tenant"]
)


def today() -> int:
    return int(time.time() // 86400)


class UsageBook:
    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        _metadata.create_all(engine)

    def count_request(self, tenant: str, minute: int) -> int:
        """One more request of `tenant` in `minute`; how many it has made in that minute, this one included.
        One statement in the usual case (the minute's row is there); atomic across replicas: the first of a
        minute inserts, and a replica that loses that race adds to the winner's row."""
        key = (_requests.c.tenant == tenant) & (_requests.c.minute == minute)
        added = _requests.update().where(key).values(count=_requests.c.count + 1).returning(_requests.c.count)
        with self._engine.begin() as db:
            count = db.execute(added).scalar()
        if count is None:
            count = self._first_of_minute(tenant, minute, added)
        REQUESTS.labels(tenant=tenant).inc()
        return count

    def _first_of_minute(self, tenant: str, minute: int, added: sa.Update) -> int:
        try:
            with self._engine.begin() as db:
                db.execute(_requests.insert().values(tenant=tenant, minute=minute, count=1))
                old = minute - USAGE_DAYS * _MINUTES_PER_DAY
                db.execute(_requests.delete().where(_requests.c.tenant == tenant, _requests.c.minute < old))
            return 1
        except sa.exc.IntegrityError:
            with self._engine.begin() as db:
                return db.execute(added).scalar_one()

    def open_job(self, tenant: str, job_id: str, limit: int, expires_at: float | None) -> bool:
        """A job of `tenant` in progress, unless `limit` of them already are (False: nothing recorded)."""
        now = time.time()
        live = (_open.c.tenant == tenant) & (_open.c.expires_at.is_(None) | (_open.c.expires_at > now))
        in_progress = sa.select(sa.func.count()).select_from(_open).where(live).scalar_subquery()
        row = sa.select(sa.literal(job_id), sa.literal(tenant), sa.literal(expires_at, sa.Float)).where(
            in_progress < limit
        )
        with self._engine.begin() as db:
            db.execute(_open.delete().where(_open.c.tenant == tenant, _open.c.expires_at <= now))
            added = db.execute(_open.insert().from_select(["job_id", "tenant", "expires_at"], row))
        return added.rowcount > 0

    def close_job(self, job_id: str) -> None:
        """The job is no longer in progress (its result came, or it never reached the broker)."""
        with self._engine.begin() as db:
            db.execute(_open.delete().where(_open.c.job_id == job_id))

    def charge(self, tenant: str, result: Result) -> None:
        """A finished job of `tenant`, counted once whatever the deliveries of its result (and no longer in
        progress)."""
        seconds = (result.duration_seconds or 0.0) if result.status == "completed" else 0.0
        row = {"job_id": result.job_id, "tenant": tenant, "day": today(), "audio_seconds": seconds}
        try:  # one commit: the first delivery both counts the job and frees its slot
            with self._engine.begin() as db:
                db.execute(_open.delete().where(_open.c.job_id == result.job_id))
                db.execute(_jobs.insert().values(**row, failed=result.status != "completed"))
        except sa.exc.IntegrityError:
            return  # counted already (here or by another replica), its slot freed then
        JOBS.labels(tenant=tenant, status=result.status).inc()
        AUDIO_SECONDS.labels(tenant=tenant).inc(seconds)

    def audio_seconds(self, tenant: str, day: int) -> float:
        with self._engine.connect() as db:
            query = sa.select(sa.func.coalesce(sa.func.sum(_jobs.c.audio_seconds), 0.0))
            return float(db.execute(query.where(_jobs.c.tenant == tenant, _jobs.c.day == day)).scalar_one())

    def days(self, tenant: str, first_day: int) -> list[dict]:
        """The tenant's usage on each day since `first_day` that has any, oldest first."""
        by_day: dict[int, dict] = {}
        with self._engine.connect() as db:
            day = (_requests.c.minute // _MINUTES_PER_DAY).label("day")
            requests = sa.select(day, sa.func.sum(_requests.c.count)).where(
                _requests.c.tenant == tenant, _requests.c.minute >= first_day * _MINUTES_PER_DAY
            )
            for number, count in db.execute(requests.group_by(day)):
                _entry(by_day, int(number))["requests"] = int(count)
            failed = sa.func.sum(sa.case((_jobs.c.failed, 1), else_=0))
            jobs = sa.select(_jobs.c.day, sa.func.count(), failed, sa.func.sum(_jobs.c.audio_seconds)).where(
                _jobs.c.tenant == tenant, _jobs.c.day >= first_day
            )
            for number, count, failures, seconds in db.execute(jobs.group_by(_jobs.c.day)):
                entry = _entry(by_day, int(number))
                entry.update(jobs=int(count), jobs_failed=int(failures), audio_seconds=round(float(seconds), 3))
        return [by_day[number] for number in sorted(by_day)]


def _entry(by_day: dict[int, dict], number: int) -> dict:
    date = (datetime.date(1970, 1, 1) + datetime.timedelta(days=number)).isoformat()
    return by_day.setdefault(number, {"date": date, "requests": 0, "jobs": 0, "jobs_failed": 0, "audio_seconds": 0.0})
