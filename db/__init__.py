"""Persistence: SQLAlchemy 2 models, sessions and Alembic migrations.

``db`` owns the tables (tenants, API keys, models, datasets, jobs) and the migrations that
create them; the job row is the single source of truth for a job's status and progress.
It imports only SQLAlchemy, Alembic and ``bitfactor.settings``: never ``api``, ``worker``,
``engine`` or torch.
"""
