"""Request limits: body size (413), per-key rate (429), per-request deadline (503).

Three ASGI middlewares, wired by :func:`install` in this order (outermost first): the rate
limit, so a throttled client costs one bucket update; the body cap, so nothing past it is
read; the deadline, which only times handlers. Each answers with the same problem+json
bodies as the routes (``{"error": ...}`` under ``/v2``, the Open Inference Protocol).

The rate limit is a token bucket per presented credential (the ``Authorization`` header's
token, hashed; the client address when there is none): ``rate_limit_burst`` requests at
once, refilled at ``rate_limit_per_minute``. In one process the buckets live in memory;
with a Redis broker configured they live in Redis (one Lua script per request, atomic, on
the Redis server's clock), so every API process behind a load balancer shares them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from api.errors import KINDS, PROBLEM_JSON, problem_type

if TYPE_CHECKING:
    from fastapi import FastAPI

    from bitfactor.settings import Settings

log = logging.getLogger("bitfactor.api")

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]

# Paths a load balancer or Prometheus polls: never throttled.
RATE_EXEMPT_PATHS = frozenset({"/healthz", "/metrics", "/v2/health/live", "/v2/health/ready"})
# Upload routes have their own body cap (api/uploads.py) and validation deadline.
UPLOAD_PREFIXES = ("/v1/models", "/v1/datasets")
TIMEOUT_RETRY_AFTER_S = 5
# The rest of a refused body is never read: the connection cannot carry another request.
CLOSE = {"Connection": "close"}


def is_upload(scope: Scope) -> bool:
    """True for the multipart upload routes (``POST /v1/models``, ``POST /v1/datasets``)."""
    return scope["method"] == "POST" and scope["path"].rstrip("/").endswith(UPLOAD_PREFIXES)


async def send_problem(
    scope: Scope,
    send: Send,
    kind: str,
    detail: str,
    *,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> None:
    """Answer ``kind`` as problem+json (``{"error": detail}`` under ``/v2``)."""
    status, title = KINDS[kind]
    path = scope["path"]
    if path.startswith("/v2"):
        body = json.dumps({"error": detail}).encode()
        media_type = "application/json"
    else:
        problem = {
            "type": problem_type(kind),
            "title": title,
            "status": status,
            "detail": detail,
            "instance": path,
            **extra,
        }
        body = json.dumps(problem).encode()
        media_type = PROBLEM_JSON
    raw_headers = [
        (b"content-type", media_type.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


# -- request bodies ---------------------------------------------------------------------


class BodyLimitMiddleware:
    """413 for a request body past ``max_bytes`` (uploads excepted: they have their own cap).

    A declared ``Content-Length`` past the cap is refused before anything is read; a body
    without one (chunked) is counted as it arrives and cut off at the cap.
    """

    def __init__(self, app: Any, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_upload(scope):
            await self.app(scope, receive, send)
            return
        detail = f"request bodies are limited to {self.max_bytes} bytes"
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_bytes:
                await send_problem(
                    scope,
                    send,
                    "payload-too-large",
                    detail,
                    headers=CLOSE,
                    max_bytes=self.max_bytes,
                )
                return
        seen = 0
        exceeded = False
        response_started = False

        async def counted() -> Any:
            nonlocal seen, exceeded
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    exceeded = True
                    # The handler sees a disconnect; its answer is replaced by the 413.
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal response_started
            if exceeded and not response_started:
                return
            response_started = response_started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not exceeded or response_started:
                raise
        if exceeded and not response_started:
            await send_problem(
                scope, send, "payload-too-large", detail, headers=CLOSE, max_bytes=self.max_bytes
            )


# -- rate limit ------------------------------------------------------------------------


class RateLimiter(Protocol):
    """Takes one token from a bucket: None when allowed, else seconds until one is free."""

    async def acquire(self, key: str) -> float | None: ...


class LocalTokenBucket:
    """Token buckets in this process's memory (the embedded, single-process setup).

    At most ``max_keys`` buckets are kept; the least recently used one goes first (it comes
    back full, which only ever favours the client).
    """

    def __init__(self, *, per_minute: int, burst: int, max_keys: int = 100_000) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float | None:
        """Synchronous :meth:`acquire`; ``now`` (monotonic seconds) for tests."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.pop(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            wait = None
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            return wait

    async def acquire(self, key: str) -> float | None:
        return self.take(key)


# KEYS[1] = bucket; ARGV = tokens per second, burst, key TTL (s). Returns {allowed, wait}.
# The clock is the Redis server's, so API processes with skewed clocks agree.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local wait = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
else
  wait = (1 - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return {allowed, tostring(wait)}
"""


class RedisTokenBucket:
    """The same token buckets, in Redis, shared by every API process using ``url``.

    If Redis does not answer, requests are let through (logged) and Redis is left alone for
    a few seconds: the limiter protects the service, it must not become the reason it is down.
    """

    def __init__(
        self, url: str, *, per_minute: int, burst: int, prefix: str = "bitfactor:ratelimit:"
    ) -> None:
        self.url = url
        self.rate = per_minute / 60.0
        self.burst = burst
        self.prefix = prefix
        # A full bucket refills in burst / rate seconds; an idle key expires after that.
        self.ttl = max(1, math.ceil(burst / self.rate) + 1)
        self.retry_after_failure_s = 5.0
        self._down_until = 0.0
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Any] = (
            weakref.WeakKeyDictionary()
        )

    def _script(self) -> Any:
        # redis.asyncio connections belong to one event loop; keep one client per loop.
        import redis.asyncio

        loop = asyncio.get_running_loop()
        script = self._clients.get(loop)
        if script is None:
            client = redis.asyncio.Redis.from_url(
                self.url, socket_timeout=1.0, socket_connect_timeout=1.0
            )
            script = self._clients[loop] = client.register_script(TOKEN_BUCKET_LUA)
        return script

    async def acquire(self, key: str) -> float | None:
        if time.monotonic() < self._down_until:
            return None
        try:
            allowed, wait = await self._script()(
                keys=[self.prefix + key], args=[self.rate, self.burst, self.ttl]
            )
        except Exception as exc:  # redis.RedisError, OSError: fail open
            # A dead Redis does not slow requests down: it is asked again a while later.
            self._down_until = time.monotonic() + self.retry_after_failure_s
            log.warning(
                "rate limit: Redis at %s did not answer (%s); not limiting for %g s",
                self.url,
                exc,
                self.retry_after_failure_s,
            )
            return None
        return None if int(allowed) else float(wait)


def credential_key(scope: Scope) -> str:
    """The bucket of a request: its bearer token's hash, or its client address."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            token = token.strip()
            if scheme.lower() == b"bearer" and token:
                return "key:" + hashlib.sha256(token).hexdigest()[:32]
    client = scope.get("client")
    return "addr:" + (str(client[0]) if client else "unknown")


class RateLimitMiddleware:
    """429 ``rate-limited`` with ``Retry-After`` (whole seconds) when a bucket is empty."""

    def __init__(self, app: Any, *, limiter: RateLimiter, per_minute: int) -> None:
        self.app = app
        self.limiter = limiter
        self.per_minute = per_minute

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in RATE_EXEMPT_PATHS:
            await self.app(scope, receive, send)
            return
        wait = await self.limiter.acquire(credential_key(scope))
        if wait is None:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(wait))
        await send_problem(
            scope,
            send,
            "rate-limited",
            f"more than {self.per_minute} requests per minute with this key; "
            f"retry in {retry_after} s",
            headers={"Retry-After": str(retry_after)},
            retry_after=retry_after,
        )


# -- deadline --------------------------------------------------------------------------


def _discard_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.info("an abandoned request ended with %r", task.exception())


class TimeoutMiddleware:
    """503 ``request-timeout`` (``Retry-After``) when a handler has not started its answer
    within ``timeout_s``; the handler is cancelled.

    Cancelling reaches the handler at its next ``await``; work already running in a thread
    (a predict's kernel call) cannot be interrupted and finishes unseen. The answer does not
    wait for it. A response that has started (a download streaming) is never cut.
    """

    def __init__(self, app: Any, *, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_upload(scope):
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        started = False
        abandoned = False

        async def guarded_send(message: dict[str, Any]) -> None:
            nonlocal started
            if abandoned:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        # One task for the handler, one future and one timer: the deadline costs a few
        # microseconds per request (an Event waiter task and asyncio.wait cost ~10x that).
        handler = loop.create_task(self.app(scope, receive, guarded_send))
        settled = loop.create_future()

        def settle(_: object = None) -> None:
            if not settled.done():
                settled.set_result(None)

        def expire() -> None:
            if not started:  # an answer that has begun is never cut
                settle()

        handler.add_done_callback(settle)
        timer = loop.call_later(self.timeout_s, expire)
        try:
            await settled
            if handler.done() or started:
                await handler
                return
        except asyncio.CancelledError:
            handler.cancel()
            raise
        finally:
            timer.cancel()
        abandoned = True
        handler.cancel()
        handler.add_done_callback(_discard_outcome)
        log.warning(
            "%s %s did not answer within %.3g s; cancelled",
            scope["method"],
            scope["path"],
            self.timeout_s,
        )
        await send_problem(
            scope,
            send,
            "request-timeout",
            f"the request did not complete within {self.timeout_s:g} s",
            headers={"Retry-After": str(TIMEOUT_RETRY_AFTER_S)},
        )


def rate_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter ``settings`` ask for: None when off, Redis with a Redis broker."""
    if settings.rate_limit_per_minute <= 0:
        return None
    per_minute, burst = settings.rate_limit_per_minute, settings.rate_limit_burst
    url = settings.broker_url or ""
    if url.startswith(("redis://", "rediss://")):
        return RedisTokenBucket(url, per_minute=per_minute, burst=burst)
    return LocalTokenBucket(per_minute=per_minute, burst=burst)


def install(app: FastAPI, settings: Settings) -> None:
    """Add the limits ``settings`` ask for to ``app`` (call after inner middlewares)."""
    # add_middleware puts each new middleware outside the ones added before.
    if settings.request_timeout_s > 0:
        app.add_middleware(TimeoutMiddleware, timeout_s=settings.request_timeout_s)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    limiter = rate_limiter(settings)
    if limiter is not None:
        app.add_middleware(
            RateLimitMiddleware, limiter=limiter, per_minute=settings.rate_limit_per_minute
        )
