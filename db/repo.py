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
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import and_, func, or_, select, update
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


def encode_cursor(row: ModelFile | Dataset | Job) -> str:
    """An opaque cursor pointing after ``row`` in newest-first order."""
    raw = f"{row.created_at.isoformat()}|{row.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, row_id = raw.split("|", 1)
        return datetime.fromisoformat(stamp), row_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidCursor("the cursor is not one this server issued") from exc


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
        stamp, row_id = _decode_cursor(cursor)
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


def claim_job(session: Session, *, job_id: str, worker_id: str, max_attempts: int) -> str:
    """Claim a job for a worker (one atomic UPDATE); returns what the worker should do.

    ``"run"``: the row is now ``running`` and owned by ``worker_id`` (a first delivery, or a
    redelivery after a worker was lost, which resumes from the last checkpoint);
    ``"canceled"``: it was canceled before it started; ``"exhausted"``: too many deliveries,
    now ``failed``; ``"skip"``: nothing to do (already finished, or unknown).
    """
    now = utcnow()
    claimed = session.execute(
        update(Job)
        .where(
            Job.id == job_id,
            Job.status.in_(("queued", "running")),
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
    job = session.get(Job, job_id)
    if job is None or job.status in TERMINAL_STATUSES:
        return "skip"
    if job.status == "canceling":
        finish_job(session, job_id=job_id, status="canceled")
        return "canceled"
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
) -> None:
    """End a job: a terminal status, and its error or result and artifact."""
    values: dict[str, Any] = {"status": status, "finished_at": utcnow(), "error": error}
    if result is not None:
        values["result"] = result
    if artifact is not None:
        values["artifact_key"], values["artifact_sha256"], values["artifact_size"] = artifact
    session.execute(update(Job).where(Job.id == job_id).values(**values))
    session.commit()


def job_counts(session: Session) -> dict[str, int]:
    """Number of jobs in each status, over all tenants (for metrics)."""
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
    return {status: int(count) for status, count in rows}
