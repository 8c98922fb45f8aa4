"""The REST API (FastAPI): validation, auth, persistence, enqueueing, downloads, ``/predict``.

``api`` is thin. It owns the HTTP surface under ``/v1`` (and the Open Inference Protocol
under ``/v2``), turns every bad input into an RFC 9457 problem+json answer, stores rows
through ``db`` and files through the artifact store, enqueues jobs for ``worker`` and runs
packed models through ``runtime``. It never trains and must never import torch or
``engine`` (an API container stays free of torch); it does not import ``worker`` tasks'
internals either, only the task name it enqueues.
"""
