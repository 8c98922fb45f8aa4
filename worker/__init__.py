"""The Celery worker: runs binarization jobs.

``worker`` is thin. A task receives only a job id, claims the job row, calls ``engine``
(torch is imported only inside the task's process), reports progress into the job row,
honours cancellation and writes artifacts atomically. It must not import ``api``; the job
row in ``db`` is the single source of truth for status, not the Celery result backend.
"""
