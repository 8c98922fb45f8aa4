"""Data access: keyword-only functions over a session, tenant-scoped where it matters.

Every lookup of a tenant's resource takes the tenant id, so another tenant's resource is
simply "not found". Lists use keyset (cursor) pagination, newest first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

from sqlalchemy import ClauseElement, Engine, and_, bindparam, func, or_, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from db.models import (
    TERMINAL_STATUSES,
    ApiKey,
    Dataset,
    Job,
    ModelFile,
    Tenant,
    utcnow,
)

KEY_PREFIX = "bf_"
Row = TypeVar("Row", ModelFile, Dataset, Job)


class InvalidCursor(ValueError):
    """A pagination cursor that this server did not issue."""


def hash_api_key(key: str, *, secret: str) -> str:
    """The stored form of an API key: HMAC-SHA256 with the server secret."""
    return hmac.new(secret.encode(), key.encode(), hashlib.sha256).hexdigest()


def get_or_create_tenant(session: Session, *, name: str) -> Tenant:
    """The tenant called ``name``, created when missing."""
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name)
        session.add(tenant)
        session.flush()
    return tenant


def create_api_key(session: Session, *, tenant: Tenant, secret: str) -> str:
    """Create a key for ``tenant``; returns the key itself (only its digest is stored)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(
        ApiKey(tenant_id=tenant.id, digest=hash_api_key(key, secret=secret), prefix=key[:10])
    )
    session.flush()
    return key


def tenant_for_key(session: Session, *, key: str, secret: str) -> Tenant | None:
    """The tenant owning an unrevoked ``key``, or None."""
    digest = hash_api_key(key, secret=secret)
    return session.scalar(
        select(Tenant)
        .join(ApiKey, ApiKey.tenant_id == Tenant.id)
        .where(ApiKey.digest == digest, ApiKey.revoked_at.is_(None))
    )


class JobForKey(NamedTuple):
    """What serving a job's model needs: the key's tenant and, when the tenant owns the
    job, its status and artifact (``status`` None: no such job for this tenant)."""

    tenant_id: str
    status: str | None
    artifact_key: str | None
    artifact_sha256: str | None


# Built once with bound parameters: building a statement costs ~20x running it on SQLite.
_JOB_FOR_KEY = (
    select(ApiKey.tenant_id, Job.status, Job.artifact_key, Job.artifact_sha256)
    .select_from(ApiKey)
    .outerjoin(Job, and_(Job.id == bindparam("job_id"), Job.tenant_id == ApiKey.tenant_id))
    .where(ApiKey.digest == bindparam("digest"), ApiKey.revoked_at.is_(None))
)


def job_for_key(engine: Engine, *, key: str, secret: str, job_id: str) -> JobForKey | None:
    """The tenant of an unrevoked ``key`` with the job ``job_id`` if that tenant owns it;
    None when the key is not valid. One round trip, no ORM: the predict hot path."""
    params = {"digest": hash_api_key(key, secret=secret), "job_id": job_id}
    if engine.dialect.name == "sqlite":
        row = _sqlite_first(engine, _JOB_FOR_KEY, params)
    else:
        with engine.connect() as connection:
            row = connection.execute(_JOB_FOR_KEY, params).first()
    if row is None:
        return None
    return JobForKey(*row)


_COMPILED: dict[tuple[int, str], tuple[str, tuple[str, ...]]] = {}


def _sqlite_first(engine: Engine, statement: ClauseElement, params: dict[str, Any]) -> Any:
    """The first row of ``statement`` run on a pooled SQLite connection's own cursor.

    The SQL and the order of its parameters are compiled from ``statement`` once. This
    skips SQLAlchemy's per-execution work (~60 us, three times the query itself on
    SQLite); errors are still raised as SQLAlchemy's (an ``OperationalError`` is a 503).
    """
    cache_key = (id(statement), engine.dialect.name)
    compiled = _COMPILED.get(cache_key)
    if compiled is None:
        sql = statement.compile(dialect=engine.dialect)
        compiled = _COMPILED[cache_key] = (str(sql), tuple(getattr(sql, "positiontup", None) or ()))
    sql_text, order = compiled
    values = tuple(params[name] for name in order)
    dbapi = engine.dialect.loaded_dbapi
    connection = engine.raw_connection()
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(sql_text, values)
            return cursor.fetchone()
        finally:
            cursor.close()
    except dbapi.Error as exc:
        raise DBAPIError.instance(
            sql_text, values, exc, dbapi.Error, dialect=engine.dialect
        ) from exc
    finally:
        connection.close()  # back to the pool


def encode_cursor(row: ModelFile | Dataset | Job) -> str:
    """An opaque cursor pointing after ``row`` in newest-first order (of its own list)."""
    raw = f"{row.__tablename__}|{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str, table: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        kind, stamp, row_id = raw.split("|", 2)
        when = datetime.fromisoformat(stamp)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("the cursor is not one this server issued") from exc
    if kind != table:
        raise InvalidCursor(f"the cursor belongs to the list of {kind}, not of {table}")
    return when, row_id


def page(
    session: Session,
    model: type[Row],
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None = None,
    filters: Sequence[Any] = (),
) -> tuple[list[Row], str | None]:
    """One page of a tenant's rows, newest first; returns (rows, next cursor or None)."""
    query = select(model).where(model.tenant_id == tenant_id, *filters)
    if cursor:
        stamp, row_id = _decode_cursor(cursor, model.__tablename__)
        query = query.where(
            or_(model.created_at < stamp, and_(model.created_at == stamp, model.id < row_id))
        )
    query = query.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)
    rows = list(session.scalars(query))
    next_cursor = encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return rows[:limit], next_cursor


def get_owned(session: Session, model: type[Row], *, tenant_id: str, row_id: str) -> Row | None:
    """A tenant's row by id, or None (also for another tenant's row)."""
    row = session.get(model, row_id)
    if row is None or row.tenant_id != tenant_id:
        return None
    return row


def unfinished_jobs_using(
    session: Session, *, tenant_id: str, model_id: str | None = None, dataset_id: str | None = None
) -> list[Job]:
    """The tenant's jobs not yet finished (queued, running, canceling) that read this model
    or dataset: deleting it would fail them."""
    uses = []
    if model_id is not None:
        uses.append(Job.model_id == model_id)
    if dataset_id is not None:
        uses += [Job.dataset_id == dataset_id, Job.val_dataset_id == dataset_id]
    statement = select(Job).where(
        Job.tenant_id == tenant_id,
        Job.status.not_in(sorted(TERMINAL_STATUSES)),
        or_(*uses),
    )
    return list(session.scalars(statement.order_by(Job.created_at).limit(5)))


def claim_job(
    session: Session,
    *,
    job_id: str,
    worker_id: str,
    max_attempts: int,
    lease_seconds: float | None = None,
    dead_owner: str | None = None,
) -> str:
    """Claim a job for a worker (one atomic UPDATE); returns what the worker should do.

    ``"run"``: the row is now ``running`` and owned by ``worker_id`` (a first delivery, or a
    redelivery after a worker was lost, which resumes from the last checkpoint);
    ``"canceled"``: it was canceled before it started; ``"exhausted"``: too many deliveries,
    now ``failed``; ``"skip"``: nothing to do (already finished, unknown, or running under a
    live lease of another worker: a duplicate message).

    A ``running`` row is taken over only when its owner is gone: its heartbeat is older
    than ``lease_seconds`` (None: always, the behaviour without leases), or its owner is
    ``dead_owner`` (the caller saw that process die on its own host).
    """
    now = utcnow()
    takeover = Job.status == "running"
    if lease_seconds is not None:
        gone = [
            Job.heartbeat_at.is_(None),
            Job.heartbeat_at < now - timedelta(seconds=lease_seconds),
        ]
        if dead_owner is not None:
            gone.append(Job.worker_id == dead_owner)
        takeover = and_(takeover, or_(*gone))
    claimed = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            or_(Job.status == "queued", takeover),
            Job.attempts < max_attempts,
        )
        .values(
            status="running",
            worker_id=worker_id,
            heartbeat_at=now,
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, now),
        )
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    if claimed:
        return "run"
    job = session.get(Job, job_id, populate_existing=True)
    if job is None or job.status in TERMINAL_STATUSES:
        return "skip"
    if job.status == "canceling":
        finish_job(session, job_id=job_id, status="canceled")
        return "canceled"
    if job.attempts < max_attempts:
        return "skip"  # running, and its owner's lease is alive
    finish_job(
        session,
        job_id=job_id,
        status="failed",
        error=f"the job was delivered {job.attempts} times and its worker was lost each time "
        f"(limit {max_attempts})",
    )
    return "exhausted"


def finish_job(
    session: Session,
    *,
    job_id: str,
    status: str,
    error: str | None = None,
    result: dict[str, Any] | None = None,
    artifact: tuple[str, str, int] | None = None,
    owner: str | None = None,
    only_from: Sequence[str] | None = None,
) -> bool:
    """End a job: a terminal status, and its error or result and artifact.

    With ``owner``, only while that worker still holds the job (a worker whose lease was
    taken over writes nothing); with ``only_from``, only from those statuses (so a cancel
    committed first wins over ``succeeded``). Returns whether the row changed.
    """
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if result is not None:
        values["result"] = result
    if artifact is not None:
        values["artifact_key"], values["artifact_sha256"], values["artifact_size"] = artifact
    query = update(Job).where(Job.id == job_id)
    if owner is not None:
        query = query.where(Job.worker_id == owner, Job.status.in_(("running", "canceling")))
    if only_from is not None:
        query = query.where(Job.status.in_(tuple(only_from)))
    changed = session.execute(
        query.values(**values).execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return bool(changed)


def heartbeat(session: Session, *, job_id: str, worker_id: str, **values: Any) -> bool:
    """Renew a running job's lease (and write ``values``, e.g. progress) while ``worker_id``
    holds it; False when another worker took it over or the job has ended."""
    changed = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.worker_id == worker_id,
            Job.status.in_(("running", "canceling")),
        )
        .values(heartbeat_at=utcnow(), **values)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    session.commit()
    return bool(changed)


def expired_jobs(session: Session, *, lease_seconds: float) -> list[str]:
    """Ids of ``running``/``canceling`` jobs whose owner's heartbeat is older than the lease."""
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    return list(
        session.scalars(
            select(Job.id).where(
                Job.status.in_(("running", "canceling")),
                or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff),
            )
        )
    )


def release_expired(session: Session, *, job_id: str, lease_seconds: float) -> str | None:
    """Take an expired job back from its lost worker (atomically: one sweeper wins).

    A ``running`` job goes back to ``queued`` (the caller enqueues it again; it resumes from
    its checkpoint); a ``canceling`` one ends ``canceled``. Returns the new status, or None
    when the lease was renewed or another sweeper got there first.
    """
    cutoff = utcnow() - timedelta(seconds=lease_seconds)
    expired = or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < cutoff)
    for current, new in (("running", "queued"), ("canceling", "canceled")):
        values: dict[str, Any] = {"status": new, "worker_id": None}
        if new == "canceled":
            values["finished_at"] = utcnow()
        changed = session.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == current, expired)
            .values(**values)
            .execution_options(synchronize_session=False)
        ).rowcount  # type: ignore[attr-defined]
        session.commit()
        if changed:
            return new
    return None


def queued_jobs(session: Session, *, created_before: datetime) -> list[str]:
    """Ids of ``queued`` jobs created before ``created_before``, oldest first."""
    return list(
        session.scalars(
            select(Job.id)
            .where(Job.status == "queued", Job.created_at < created_before)
            .order_by(Job.created_at)
        )
    )


def job_counts(session: Session) -> dict[str, int]:
    """Number of jobs in each status, over all tenants (for metrics)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: int(count) for status, count in rows}
