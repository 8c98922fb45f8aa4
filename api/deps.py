"""Dependencies: the app state, a session, the caller's tenant, and owned resources.

The ``Owned*`` aliases load a resource by its path id and answer 404 when it is missing
or belongs to another tenant (the two are indistinguishable on purpose).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from api.errors import Problem
from api.state import AppState
from db import repo
from db.models import Dataset, Job, ModelFile, Tenant
from db.session import is_transient


async def get_state(request: Request) -> AppState:
    """The process-wide :class:`AppState` (async: a sync dependency costs a thread hop)."""
    state: AppState = request.app.state.bitfactor
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_session(state: StateDep) -> Iterator[Session]:
    """A database session for one request, committed by the route when it writes."""
    session = state.sessions()
    try:
        yield session
    finally:
        try:
            session.close()
        except Exception as exc:
            # The database went away mid-request: the request already has its answer
            # (503); a failed rollback on the dead connection must not replace it.
            if not is_transient(exc):
                raise
            session.invalidate()


SessionDep = Annotated[Session, Depends(get_session)]


def release(session: Session) -> None:
    """End a read-only transaction so its pooled connection goes back now.

    A request keeps its session until the response is sent; async routes (predict,
    uploads) then wait for threadpool slots while holding it. Under more concurrent
    requests than pooled connections, those slots were all taken by threads waiting for
    a connection: a deadlock until the pool's timeout. Loaded rows stay usable
    (``expire_on_commit=False``); a later query takes a connection again.
    """
    if not (session.new or session.dirty or session.deleted):
        session.commit()


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="bitfactor"'}


def bearer_key(request: Request) -> str:
    """The key of the ``Authorization: Bearer`` header; 401 when there is none."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise Problem("unauthorized", "send 'Authorization: Bearer <api key>'", headers=CHALLENGE)
    return key.strip()


def invalid_key() -> Problem:
    """The 401 for a key that is unknown or revoked."""
    return Problem("unauthorized", "the API key is not valid", headers=CHALLENGE)


def get_tenant(request: Request, state: StateDep, session: SessionDep) -> Tenant:
    """The tenant of the ``Authorization: Bearer`` key; 401 without a valid one."""
    key = bearer_key(request)
    tenant = repo.tenant_for_key(session, key=key, secret=state.settings.secret_key)
    if tenant is None:
        raise invalid_key()
    release(session)
    return tenant


TenantDep = Annotated[Tenant, Depends(get_tenant)]


def owned_model(model_id: str, session: SessionDep, tenant: TenantDep) -> ModelFile:
    """The caller's model ``model_id`` or 404."""
    row = repo.get_owned(session, ModelFile, tenant_id=tenant.id, row_id=model_id)
    if row is None:
        raise Problem("not-found", f"no model {model_id}")
    release(session)
    return row


def owned_dataset(dataset_id: str, session: SessionDep, tenant: TenantDep) -> Dataset:
    """The caller's dataset ``dataset_id`` or 404."""
    row = repo.get_owned(session, Dataset, tenant_id=tenant.id, row_id=dataset_id)
    if row is None:
        raise Problem("not-found", f"no dataset {dataset_id}")
    release(session)
    return row


def owned_job(job_id: str, session: SessionDep, tenant: TenantDep) -> Job:
    """The caller's job ``job_id`` or 404."""
    row = repo.get_owned(session, Job, tenant_id=tenant.id, row_id=job_id)
    if row is None:
        raise Problem("not-found", f"no job {job_id}")
    release(session)
    return row


OwnedModel = Annotated[ModelFile, Depends(owned_model)]
OwnedDataset = Annotated[Dataset, Depends(owned_dataset)]
OwnedJob = Annotated[Job, Depends(owned_job)]


def page_body(
    session: Session,
    model: type[repo.Row],
    *,
    tenant_id: str,
    limit: int,
    cursor: str | None,
    filters: Sequence[Any] = (),
) -> dict[str, Any]:
    """One page of a tenant's rows as a ``Page`` body; a bad cursor answers 400."""
    try:
        rows, next_cursor = repo.page(
            session, model, tenant_id=tenant_id, limit=limit, cursor=cursor, filters=filters
        )
    except repo.InvalidCursor as exc:
        raise Problem("invalid-cursor", str(exc)) from exc
    return {"items": rows, "next_cursor": next_cursor}


def refuse_if_in_use(jobs: Sequence[Job]) -> None:
    """409 ``resource-in-use`` naming the unfinished jobs that read a model or dataset."""
    if jobs:
        names = ", ".join(f"{job.id} ({job.status})" for job in jobs)
        raise Problem(
            "resource-in-use",
            f"jobs that have not finished read it: {names}; cancel them or wait for them "
            "to finish, then delete it",
        )
