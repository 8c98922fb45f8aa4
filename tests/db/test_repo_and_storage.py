"""Data access (keys, pagination, job claims) and the local artifact store."""

from __future__ import annotations

import hashlib
import os
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update
from sqlalchemy.orm import Session

from db import repo
from db.models import Job, Tenant, utcnow
from db.session import connect, session_factory, upgrade
from db.storage import LocalArtifactStore, StorageError, TooLarge


@pytest.fixture
def session(tmp_path: Path) -> Session:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    return session_factory(connect(url))()


def _job(session: Session, tenant: Tenant, **values: object) -> Job:
    job = Job(tenant_id=tenant.id, model_id="m", dataset_id="d", config={}, **values)
    session.add(job)
    session.commit()
    return job


def test_api_keys_are_stored_hashed(session: Session) -> None:
    tenant = repo.get_or_create_tenant(session, name="acme")
    key = repo.create_api_key(session, tenant=tenant, secret="s" * 20)
    session.commit()
    assert key.startswith("bf_")
    assert len(key) > 40
    from db.models import ApiKey

    stored = session.query(ApiKey).one()
    assert key not in (stored.digest, stored.prefix + "x")
    assert stored.digest != hashlib.sha256(key.encode()).hexdigest()  # keyed, not plain
    assert repo.tenant_for_key(session, key=key, secret="s" * 20) == tenant
    assert repo.tenant_for_key(session, key=key, secret="t" * 20) is None
    assert repo.tenant_for_key(session, key=key + "x", secret="s" * 20) is None
    stored.revoked_at = utcnow()
    session.commit()
    assert repo.tenant_for_key(session, key=key, secret="s" * 20) is None
    assert repo.get_or_create_tenant(session, name="acme").id == tenant.id


def test_pagination_with_equal_timestamps(session: Session) -> None:
    tenant = repo.get_or_create_tenant(session, name="t")
    stamp = utcnow()
    ids = {_job(session, tenant, created_at=stamp).id for _ in range(5)}
    _job(session, tenant, created_at=stamp - timedelta(seconds=1))
    seen: list[str] = []
    cursor = None
    while True:
        rows, cursor = repo.page(session, Job, tenant_id=tenant.id, limit=2, cursor=cursor)
        seen += [r.id for r in rows]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == 6
    assert set(seen[:5]) == ids  # the five newest first, ties broken by id
    with pytest.raises(repo.InvalidCursor):
        repo.page(session, Job, tenant_id=tenant.id, limit=2, cursor="bm9wZQ")


def test_claims(session: Session) -> None:
    tenant = repo.get_or_create_tenant(session, name="t")
    job = _job(session, tenant)
    assert repo.claim_job(session, job_id=job.id, worker_id="w1", max_attempts=2) == "run"
    session.refresh(job)
    assert (job.status, job.worker_id, job.attempts) == ("running", "w1", 1)
    assert job.heartbeat_at is not None
    assert job.started_at is not None
    # Redelivered after the worker was lost: taken over, counted.
    assert repo.claim_job(session, job_id=job.id, worker_id="w2", max_attempts=2) == "run"
    session.refresh(job)
    assert (job.worker_id, job.attempts) == ("w2", 2)
    # Once more: over the cap, the job fails with a readable error.
    assert repo.claim_job(session, job_id=job.id, worker_id="w3", max_attempts=2) == "exhausted"
    session.refresh(job)
    assert job.status == "failed"
    assert "2 times" in (job.error or "")
    assert repo.claim_job(session, job_id=job.id, worker_id="w4", max_attempts=9) == "skip"
    assert repo.claim_job(session, job_id="missing", worker_id="w", max_attempts=9) == "skip"

    canceled = _job(session, tenant, status="canceling")
    assert repo.claim_job(session, job_id=canceled.id, worker_id="w", max_attempts=3) == "canceled"
    session.refresh(canceled)
    assert canceled.status == "canceled"
    assert repo.job_counts(session) == {"failed": 1, "canceled": 1}


def test_store_round_trip_and_checksums(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "a")
    source = tmp_path / "src.bin"
    source.write_bytes(b"hello" * 1000)
    sha, size = store.put_file("jobs/x/model.bfm", source)
    assert not source.exists()  # moved, not copied
    assert size == 5000
    assert sha == hashlib.sha256(b"hello" * 1000).hexdigest()
    path = store.verified_path("jobs/x/model.bfm", sha)
    assert path.read_bytes() == b"hello" * 1000
    path.write_bytes(b"hellO" * 1000)
    with pytest.raises(StorageError, match="corrupted"):
        store.verified_path("jobs/x/model.bfm", sha)
    with pytest.raises(StorageError, match="missing"):
        store.verified_path("jobs/y/model.bfm", sha)
    store.delete("jobs/x/model.bfm")
    store.delete("jobs/x/model.bfm")
    assert not path.exists()


@pytest.mark.parametrize("key", ["../escape", "/abs", "a/../../b", "a//b", "", "a/b c"])
def test_store_refuses_odd_keys(tmp_path: Path, key: str) -> None:
    with pytest.raises(StorageError):
        LocalArtifactStore(tmp_path).local_path(key)


@settings(max_examples=25, deadline=None)
@given(chunks=st.lists(st.binary(max_size=300), max_size=8), cap=st.integers(0, 1200))
def test_put_stream_is_all_or_nothing(
    tmp_path_factory: pytest.TempPathFactory, chunks: list[bytes], cap: int
) -> None:
    store = LocalArtifactStore(tmp_path_factory.mktemp("s"))
    data = b"".join(chunks)
    if len(data) > cap:
        with pytest.raises(TooLarge):
            store.put_stream("k/v", iter(chunks), max_bytes=cap)
        assert not store.local_path("k/v").exists()
    else:
        sha, size = store.put_stream("k/v", iter(chunks), max_bytes=cap)
        assert (sha, size) == (hashlib.sha256(data).hexdigest(), len(data))
        assert store.local_path("k/v").read_bytes() == data
    assert list((store.root / "tmp").iterdir()) == []


def test_claims_respect_a_live_lease(session: Session) -> None:
    """A running job is taken over only when its owner's lease expired or its owner is
    known dead; a duplicate message for a job under a live lease is skipped."""
    tenant = repo.get_or_create_tenant(session, name="t")
    job = _job(session, tenant)
    claim = {"job_id": job.id, "max_attempts": 5, "lease_seconds": 30.0}
    assert repo.claim_job(session, worker_id="w1", **claim) == "run"
    assert repo.claim_job(session, worker_id="w2", **claim) == "skip"
    assert repo.claim_job(session, worker_id="w2", dead_owner="other", **claim) == "skip"
    assert repo.claim_job(session, worker_id="w2", dead_owner="w1", **claim) == "run"
    session.refresh(job)
    assert (job.worker_id, job.attempts) == ("w2", 2)
    job.heartbeat_at = utcnow() - timedelta(seconds=31)
    session.commit()
    assert repo.claim_job(session, worker_id="w3", **claim) == "run"
    session.refresh(job)
    assert (job.worker_id, job.attempts) == ("w3", 3)


def test_heartbeat_and_finish_are_fenced(session: Session) -> None:
    tenant = repo.get_or_create_tenant(session, name="t")
    job = _job(session, tenant)
    assert repo.claim_job(session, job_id=job.id, worker_id="w1", max_attempts=3) == "run"
    assert repo.heartbeat(session, job_id=job.id, worker_id="w1", progress={"step": 1})
    assert not repo.heartbeat(session, job_id=job.id, worker_id="w0")
    assert not repo.finish_job(session, job_id=job.id, status="succeeded", owner="w0")
    # A cancel committed before the owner's "succeeded" wins.
    session.execute(update(Job).where(Job.id == job.id).values(status="canceling"))
    session.commit()
    done = repo.finish_job(
        session, job_id=job.id, status="succeeded", owner="w1", only_from=("running",)
    )
    assert not done
    assert repo.finish_job(session, job_id=job.id, status="canceled", owner="w1")
    session.refresh(job)
    assert (job.status, job.artifact_key) == ("canceled", None)
    assert not repo.heartbeat(session, job_id=job.id, worker_id="w1")  # ended


def test_release_expired(session: Session) -> None:
    tenant = repo.get_or_create_tenant(session, name="t")
    old = utcnow() - timedelta(seconds=100)
    lost = _job(session, tenant, status="running", worker_id="w", heartbeat_at=old)
    stopping = _job(session, tenant, status="canceling", worker_id="w", heartbeat_at=old)
    alive = _job(session, tenant, status="running", worker_id="w", heartbeat_at=utcnow())
    _job(session, tenant, status="succeeded", heartbeat_at=old)
    assert sorted(repo.expired_jobs(session, lease_seconds=60)) == sorted([lost.id, stopping.id])
    assert repo.release_expired(session, job_id=lost.id, lease_seconds=60) == "queued"
    assert repo.release_expired(session, job_id=lost.id, lease_seconds=60) is None  # once
    assert repo.release_expired(session, job_id=stopping.id, lease_seconds=60) == "canceled"
    assert repo.release_expired(session, job_id=alive.id, lease_seconds=60) is None
    session.refresh(lost)
    assert (lost.status, lost.worker_id) == ("queued", None)
    assert repo.queued_jobs(session, created_before=utcnow()) == [lost.id]


def test_verified_path_hashes_again_after_any_change(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "a")
    source = tmp_path / "f"
    source.write_bytes(b"abcdef" * 100)
    sha, _ = store.put_file("k/f.bin", source)
    path = store.verified_path("k/f.bin", sha)
    assert store.verified_path("k/f.bin", sha) == path  # cached: not hashed again
    stat = path.stat()
    raw = bytearray(path.read_bytes())
    raw[3] ^= 0x01
    path.write_bytes(bytes(raw))  # same size; mtime set back: only ctime tells
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(StorageError, match="corrupted"):
        store.verified_path("k/f.bin", sha)
    with pytest.raises(StorageError, match="corrupted"):
        store.verified_bytes("k/f.bin", sha)
    raw[3] ^= 0x01
    path.write_bytes(bytes(raw))
    assert store.verified_bytes("k/f.bin", sha) == b"abcdef" * 100


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database: a SQLite file, and a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    else:
        url = str(request.getfixturevalue("postgres_schema_url"))
    upgrade(url)
    return url


def test_job_for_key_answers_like_the_tenant_and_job_lookups(database_url: str) -> None:
    """The predict path's one query (raw cursor on SQLite, SQLAlchemy elsewhere) agrees
    with ``tenant_for_key`` + ``get_owned`` on every case, on both databases."""
    secret = "s" * 20
    engine = connect(database_url, pool_size=2)
    with session_factory(engine)() as session:
        alice = repo.get_or_create_tenant(session, name="alice")
        bob = repo.get_or_create_tenant(session, name="bob")
        key = repo.create_api_key(session, tenant=alice, secret=secret)
        revoked = repo.create_api_key(session, tenant=alice, secret=secret)
        session.commit()
        done = _job(session, alice, status="succeeded", artifact_key="jobs/x/a.bfm")
        done.artifact_sha256 = "ab" * 32
        queued = _job(session, alice)
        theirs = _job(session, bob, status="succeeded")
        from db.models import ApiKey

        digest = repo.hash_api_key(revoked, secret=secret)
        session.query(ApiKey).filter_by(digest=digest).update({"revoked_at": utcnow()})
        session.commit()
        ids = (done.id, queued.id, theirs.id)

    def find(key: str, job_id: str, secret: str = secret) -> repo.JobForKey | None:
        return repo.job_for_key(engine, key=key, secret=secret, job_id=job_id)

    try:
        assert find(key, ids[0]) == (alice.id, "succeeded", "jobs/x/a.bfm", "ab" * 32)
        assert find(key, ids[1]) == (alice.id, "queued", None, None)
        assert find(key, ids[2]) == (alice.id, None, None, None)  # bob's job: not found
        assert find(key, "no-such-job") == (alice.id, None, None, None)
        assert find(revoked, ids[0]) is None
        assert find(key + "x", ids[0]) is None
        assert find(key, ids[0], secret="t" * 20) is None
    finally:
        engine.dispose()


def test_sqlite_fast_path_raises_sqlalchemy_errors(tmp_path: Path) -> None:
    """A failing query on the raw SQLite cursor surfaces as SQLAlchemy's OperationalError,
    which the API answers as a 503 like any other transient database error."""
    from sqlalchemy.exc import OperationalError

    from db.session import is_transient

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    upgrade(url)
    engine = connect(url, pool_size=1)
    with engine.begin() as connection:
        connection.exec_driver_sql("DROP TABLE api_keys")
    with pytest.raises(OperationalError, match="api_keys") as raised:
        repo.job_for_key(engine, key="bf_x", secret="s" * 20, job_id="j")
    assert is_transient(raised.value)
    # The connection went back to the pool: the next query can run.
    with engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT 1").scalar() == 1
    engine.dispose()


def test_is_verified_is_a_stat_that_any_change_turns_false(tmp_path: Path) -> None:
    store = LocalArtifactStore(tmp_path / "store")
    source = tmp_path / "a.bin"
    source.write_bytes(b"abc" * 100)
    sha, _ = store.put_file("jobs/j/a.bin", source)
    assert not store.is_verified("jobs/j/a.bin", sha)  # never hashed by this process yet
    store.verified_path("jobs/j/a.bin", sha)
    assert store.is_verified("jobs/j/a.bin", sha)
    assert not store.is_verified("jobs/j/a.bin", "00" * 32)
    assert not store.is_verified("jobs/j/missing.bin", sha)
    assert not store.is_verified("../escape", sha)
    path = store.local_path("jobs/j/a.bin")
    path.write_bytes(b"abd" * 100)  # same size: the ctime still moves
    assert not store.is_verified("jobs/j/a.bin", sha)
    with pytest.raises(StorageError, match="corrupted"):
        store.verified_path("jobs/j/a.bin", sha)
