"""Async jobs' records in a real database (SQLAlchemy Core): a SQLite file by default, or a server
database URL (e.g. postgresql://...) shared by several gateway replicas. A record outlives the
gateway process: a restart finds every job it accepted, and their results still arrive (on the
durable queue that every replica consumes).
"""

import json
import time
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from worker.messages import ErrorInfo, ProgressEvent, Result

State = Literal["queued", "running", "completed", "failed"]

_metadata = sa.MetaData()
_jobs = sa.Table(
    "jobs",
    _metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("task", sa.String(16), nullable=False),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("upload_token", sa.String(64), nullable=True),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("chunks_done", sa.Integer, nullable=False, default=0),
    sa.Column("chunks_total", sa.Integer, nullable=False, default=0),
    sa.Column("percent", sa.Float, nullable=False, default=0.0),
    sa.Column("result", sa.Text, nullable=True),  # the worker's Result, as JSON
    # The tenant that made the job (worker/gateway/tenants.py): only it sees the record. Records made
    # before owners were kept have none, and nobody sees them.
    sa.Column("owner", sa.String(64), nullable=True),
)


@dataclass(frozen=True)
class JobRecord:
    id: str
    state: State
    task: str
    model: str
    upload_token: str | None
    created_at: float
    updated_at: float
    chunks_done: int
    chunks_total: int
    percent: float
    result: Result | None
    owner: str | None = None

    def document(self) -> dict[str, Any]:
        """The record as GET /v1/jobs/{id} answers it."""
        doc: dict[str, Any] = {
            "id": self.id,
            "object": "transcription.job",
            "state": self.state,
            "task": self.task,
            "model": self.model,
            "created_at": round(self.created_at, 3),
            "updated_at": round(self.updated_at, 3),
            "progress": {"chunks_done": self.chunks_done, "chunks_total": self.chunks_total, "percent": self.percent},
        }
        if self.result is not None:
            doc["result"] = self.result.model_dump(mode="json", exclude={"outputs"})
        return doc


class JobStore:
    def __init__(self, url: str) -> None:
        self._engine = sa.create_engine(url, pool_pre_ping=True)
        if self._engine.dialect.name == "sqlite":
            sa.event.listen(self._engine, "connect", _write_ahead)
        _metadata.create_all(self._engine)
        self._add_owner_column()

    @property
    def engine(self) -> sa.Engine:
        """The database's engine (worker/gateway/usage.py keeps its tables there too)."""
        return self._engine

    def _add_owner_column(self) -> None:
        """A database made before records had owners gets the column (its old records keep none)."""
        if "owner" not in {c["name"] for c in sa.inspect(self._engine).get_columns("jobs")}:
            with self._engine.begin() as db:
                db.execute(sa.text("ALTER TABLE jobs ADD COLUMN owner VARCHAR(64)"))

    def add(self, job_id: str, *, task: str, model: str, upload_token: str | None, owner: str) -> JobRecord:
        now = time.time()
        with self._engine.begin() as db:
            db.execute(
                _jobs.insert().values(
                    id=job_id, state="queued", task=task, model=model, upload_token=upload_token,
                    created_at=now, updated_at=now, chunks_done=0, chunks_total=0, percent=0.0, owner=owner,
                )
            )  # fmt: skip
        return self.get(job_id)

    def get(self, job_id: str, *, owner: str | None = None) -> JobRecord | None:
        """The record; with `owner`, only when that tenant made the job (else None, as for no job)."""
        with self._engine.connect() as db:
            row = db.execute(sa.select(_jobs).where(_jobs.c.id == job_id)).mappings().first()
        if row is None or (owner is not None and row["owner"] != owner):
            return None
        result = Result.model_validate_json(row["result"]) if row["result"] else None
        return JobRecord(**{**row, "result": result})

    def progress(self, event: ProgressEvent) -> bool:
        """Record a progress event of a job still running; False when the job is not ours or is done."""
        with self._engine.begin() as db:
            done = db.execute(
                _jobs.update()
                .where(_jobs.c.id == event.job_id, _jobs.c.state.in_(("queued", "running")))
                .values(
                    state="running", chunks_done=event.chunks_done, chunks_total=event.chunks_total,
                    percent=event.percent, updated_at=time.time(),
                )
            )  # fmt: skip
        return done.rowcount > 0

    def finish(self, result: Result) -> JobRecord | None:
        """Record a job's result (the first one wins: redeliveries change nothing)."""
        state = "completed" if result.status == "completed" else "failed"
        percent = 100.0 if state == "completed" else None
        values: dict[str, Any] = {"state": state, "result": result.model_dump_json(), "updated_at": time.time()}
        if percent is not None:
            values["percent"] = percent
        with self._engine.begin() as db:
            db.execute(
                _jobs.update()
                .where(_jobs.c.id == result.job_id, _jobs.c.state.in_(("queued", "running")))
                .values(**values)
            )
        return self.get(result.job_id)

    def fail(self, job_id: str, error: ErrorInfo) -> JobRecord | None:
        """Mark failed a job that never reached the broker (its publish failed): no record stays "queued"."""
        return self.finish(Result(job_id=job_id, status="failed", error=error))


def _write_ahead(connection, _record) -> None:
    """SQLite in write-ahead mode: a commit is one append and one sync of the log (not a journal written,
    synced and deleted: about half of what a counted request cost), and readers never wait for a writer,
    which gateway replicas sharing the file do all the time. Durability is unchanged (synchronous=FULL)."""
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.close()


def dumps(record: JobRecord) -> str:
    return json.dumps(record.document())
