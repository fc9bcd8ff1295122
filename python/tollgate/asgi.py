"""Pure ASGI 3 middlewares (Starlette, FastAPI, any ASGI app): ``IdempotencyMiddleware`` and
``RateLimitMiddleware``.

The event loop never waits on an fsync or a server: what memory can answer (a replay from the
cache, a Batched rate check) is answered on the loop; the rest runs in a worker thread through
anyio, with the GIL released inside tollgate. Add ``IdempotencyMiddleware`` first, then
``RateLimitMiddleware`` (Starlette runs the last added first), so that a 429 is never stored as a
request's outcome.
"""

from __future__ import annotations

import asyncio
import functools
import weakref
from typing import Any, Awaitable, Callable, Dict, List, MutableMapping, Optional, Sequence, Tuple

import anyio
import anyio.to_thread

from . import _http, _native
from ._errors import InvalidArgument, TollgateError
from ._keeper import LeaseKeeper
from ._native import Acquired, Bridge, InFlight, Limit, Mismatch, Replay, Store, fingerprint, parse_idempotency_key  # noqa: F401

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ["IdempotencyMiddleware", "RateLimitMiddleware"]


async def _answer(send: Send, answer: _http.Answer, extra: Sequence[Tuple[bytes, bytes]] = ()) -> None:
    headers = [(n.encode("latin-1"), v.encode("latin-1")) for n, v in answer.headers]
    headers.append((b"content-length", str(len(answer.body)).encode()))
    headers.extend(extra)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": answer.body, "more_body": False})


def _header_values(scope: Scope, name: bytes) -> List[bytes]:
    return [value for key, value in scope.get("headers", ()) if key.lower() == name]


async def _in_thread(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    return await anyio.to_thread.run_sync(functools.partial(function, *args, **kwargs))


class _LoopBridge:
    """Store calls that may wait, run on tollgate's worker threads, their results handed to the
    event loop through a descriptor it watches (``Bridge`` in the native module says why). One
    per asyncio loop; other event loops (trio) use anyio's worker threads instead."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.native = Bridge()
        self.loop = loop
        self.waiting: Dict[int, "asyncio.Future[Any]"] = {}
        loop.add_reader(self.native.fileno(), self._deliver)

    def _deliver(self) -> None:
        for call, ok, value in self.native.take():
            future = self.waiting.pop(call, None)
            if future is None or future.done():
                continue
            if ok:
                future.set_result(value)
            elif isinstance(value, BaseException):
                future.set_exception(value)

    async def result(self, call: int) -> Any:
        future = self.loop.create_future()
        self.waiting[call] = future
        try:
            return await future
        finally:
            self.waiting.pop(call, None)


_BRIDGES: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Optional[_LoopBridge]]" = weakref.WeakKeyDictionary()


def _bridge() -> Optional[_LoopBridge]:
    """The running asyncio loop's bridge, or ``None`` (another event loop, or one that cannot
    watch a descriptor)."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    if loop not in _BRIDGES:
        try:
            _BRIDGES[loop] = _LoopBridge(loop)
        except (NotImplementedError, OSError, TollgateError):
            _BRIDGES[loop] = None
    return _BRIDGES[loop]


async def _begin(store: Store, key_space: str, key: str, request: bytes, wait: Optional[float]) -> Any:
    bridge = _bridge()
    if bridge is None:
        return await _in_thread(store.begin, key_space, key, request, wait=wait)
    return await bridge.result(bridge.native.begin(store, key_space, key, request, wait))


async def _check_all(store: Store, checks: List[Tuple[Limit, str]], cost: int) -> Any:
    bridge = _bridge()
    if bridge is None:
        return await _in_thread(store.check_all, checks, cost)
    return await bridge.result(bridge.native.check_all(store, checks, cost))






async def _release(lease: Any) -> None:
    bridge = _bridge()
    try:
        if bridge is None:
            await _in_thread(lease.release)
        else:
            await bridge.result(bridge.native.release(lease))
    except TollgateError as error:
        # The key stays RUNNING until its lease expires; nothing better to do.
        _http.logger.warning("could not release an idempotency key: %s", error)


async def _complete(lease: Any, status: int, body: bytes, headers: List[Tuple[bytes, bytes]]) -> None:
    bridge = _bridge()
    try:
        if bridge is None:
            await _in_thread(lease.complete, status, body, headers)
        else:
            await bridge.result(bridge.native.complete(lease, status, body, headers))
    except TollgateError as error:
        if isinstance(error, InvalidArgument) and not lease.resolved:
            # Too large to store (the lease is handed back): the answer goes out, the key is
            # released.
            await _release(lease)
        # The client gets its answer either way; a lost lease means another attempt owns the
        # key now (this process stalled past its lease), so this answer is not stored.
        _http.logger.warning("response not recorded: %s: %s", type(error).__name__, error)

class IdempotencyMiddleware:
    """Makes the covered requests of an ASGI app idempotent under an ``Idempotency-Key``.

    For a request whose method is in ``methods``: a malformed key answers 400, a missing one 400
    when ``key_required`` (else the request passes through); ``key_scope(scope)`` returning
    ``None`` answers 401; a body over ``max_body_bytes`` answers 413. Then the store decides:
    a finished request replays its stored status, headers and body with
    ``Idempotent-Replayed: true``; a duplicate in flight answers 409 with ``Retry-After: 1`` (or
    waits up to ``wait`` seconds); the same key with another request answers 422. Otherwise the
    app runs, its lease kept alive meanwhile; its response is stored when ``store_when(status)``
    says so (default: below 500), else the key is released. An app that raises releases the key.
    The store's errors answer 503 (or 500) without internals.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        key_scope: Optional[Callable[[Scope], Optional[str]]] = None,
        methods: Sequence[str] = _http.DEFAULT_METHODS,
        key_required: bool = False,
        wait: Optional[float] = None,
        max_body_bytes: int = _http.DEFAULT_MAX_BODY_BYTES,
        fingerprint_headers: Sequence[str] = (),
        store_when: Optional[Callable[[int], bool]] = None,
    ) -> None:
        self.app = app
        self.settings = _http.IdempotencySettings(store, key_scope, methods, key_required, wait, max_body_bytes, store_when)
        self.store = store
        self.wait = wait
        self.max_body_bytes = max_body_bytes
        self.fingerprint_headers = [name.lower().encode("latin-1") for name in fingerprint_headers]

    def _lease_keeper(self) -> LeaseKeeper:
        return self.settings.lease_keeper()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in self.settings.methods:
            await self.app(scope, receive, send)
            return
        try:
            key = parse_idempotency_key(_header_values(scope, b"idempotency-key"))
        except InvalidArgument as reason:
            await _answer(send, _http.malformed_key(str(reason)))
            return
        if key is None:
            if self.settings.key_required:
                await _answer(send, _http.missing_key())
            else:
                await self.app(scope, receive, send)
            return
        key_space = self.settings.key_space(scope)
        if key_space is None:
            await _answer(send, _http.unidentified())
            return
        body = await self._read_body(scope, receive)
        if body is None:
            await _answer(send, _http.too_large(self.max_body_bytes))
            return
        if body is _DISCONNECTED:
            return
        request = fingerprint(
            body=body,
            method=scope["method"],
            path=self._target(scope),
            headers=[
                (name.decode("latin-1"), value)
                for name in self.fingerprint_headers
                for value in _header_values(scope, name)
            ],
        )
        try:
            begun = self.store.try_begin(key_space, key, request)
            if begun is None:
                begun = await _begin(self.store, key_space, key, request, self.wait)
        except TollgateError as error:
            await _answer(send, _http.begin_error(error))
            return
        if isinstance(begun, Replay):
            await self._replay(send, begun)
        elif isinstance(begun, InFlight):
            await _answer(send, _http.in_flight())
        elif isinstance(begun, Mismatch):
            await _answer(send, _http.mismatch())
        else:
            assert isinstance(begun, Acquired)
            await self._execute(scope, send, body, receive, begun)

    @staticmethod
    def _target(scope: Scope) -> str:
        """The path with its query, as sent (percent-encoded)."""
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope.get("root_path", "") + scope["path"]
        query = scope.get("query_string", b"")
        return f"{path}?{query.decode('latin-1')}" if query else path

    async def _read_body(self, scope: Scope, receive: Receive) -> Any:
        """The whole request body, ``None`` when over the limit, ``_DISCONNECTED`` when the
        client left before sending it."""
        for value in _header_values(scope, b"content-length"):
            if value.isdigit() and int(value) > self.max_body_bytes:
                return None
        chunks: List[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return _DISCONNECTED
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    @staticmethod
    async def _replay(send: Send, replay: Replay) -> None:
        headers = [(n, v) for n, v in replay.raw_headers]
        headers.append((b"content-length", str(len(replay.body)).encode()))
        headers.append((_http.IDEMPOTENT_REPLAYED.encode(), b"true"))
        await send({"type": "http.response.start", "status": replay.status, "headers": headers})
        await send({"type": "http.response.body", "body": replay.body, "more_body": False})

    async def _execute(self, scope: Scope, send: Send, body: bytes, receive: Receive, begun: Acquired) -> None:
        lease = begun.lease
        scope.setdefault("state", {})
        scope["state"]["tollgate_lease"] = lease
        recorder = _Recorder(self.store.max_response_bytes)
        body_given = False

        async def replay_receive() -> Message:
            nonlocal body_given
            if not body_given:
                body_given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def recording_send(message: Message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                recorder.start(message)
            elif kind == "http.response.body":
                recorder.add(message.get("body", b""))
                if not message.get("more_body", False):
                    # The outcome is durable before the client sees the end of the answer, so an
                    # immediate retry replays it.
                    await self._record(lease, recorder)
            elif kind == "http.response.pathsend":
                await _in_thread(recorder.add_file, message["path"])
                await self._record(lease, recorder)
            await send(message)

        keeper = self._lease_keeper()
        keeper.hold(lease)
        try:
            await self.app(scope, replay_receive, recording_send)
        except BaseException:
            keeper.drop(lease)
            if not recorder.recorded:
                await _release(lease)
            raise
        keeper.drop(lease)
        if not recorder.recorded:
            # The app returned without finishing its answer: nothing to store.
            await _release(lease)

    async def _record(self, lease: Any, recorder: "_Recorder") -> None:
        recorder.recorded = True
        self._lease_keeper().drop(lease)
        if recorder.status is None:
            await _release(lease)
            return
        if not recorder.storable or not self.settings.store_when(recorder.status):
            await _release(lease)
            return
        await _complete(lease, recorder.status, recorder.body(), recorder.headers)


class _Recorder:
    """The response as the app sends it, kept for storing up to the store's size limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status: Optional[int] = None
        self.headers: List[Tuple[bytes, bytes]] = []
        self.chunks: List[bytes] = []
        self.size = 0
        self.storable = True
        self.recorded = False

    def start(self, message: Message) -> None:
        self.status = int(message["status"])
        self.headers = _http.stored_headers(message.get("headers", ()))
        self.size += sum(len(n) + len(v) for n, v in self.headers)

    def add(self, chunk: bytes) -> None:
        if not self.storable:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            # Too large to store: the answer still goes out, and the key is released.
            self.storable = False
            self.chunks = []
            return
        self.chunks.append(bytes(chunk))

    def add_file(self, path: str) -> None:
        with open(path, "rb") as file:
            self.add(file.read(max(0, self.limit - self.size) + 1))

    def body(self) -> bytes:
        return b"".join(self.chunks)



_DISCONNECTED = object()


class RateLimitMiddleware(_native.RateLimitCore):
    """Charges each request to every limit that applies, all or nothing, before the app runs.

    ``limits`` holds ``(limit, subject)`` pairs: ``subject(scope)`` names whose counter the
    request is charged to (``None``: this limit does not apply to the request), or ``subject`` is
    ``None`` for one counter shared by every request. ``cost(scope)`` says what a request costs
    (default 1). A denied request answers 429 with ``Retry-After``, ``RateLimit-Policy``,
    ``RateLimit`` and ``X-RateLimit-*``; an allowed one gets the same fields (without
    ``Retry-After``) on its response: ``fields="all"`` (the default), ``"ietf"`` (only
    ``RateLimit-Policy`` and ``RateLimit``: each field costs the server time to write) or
    ``"denials"`` (none on allowed answers). With ``shadow=True`` nothing is denied. When the
    counters cannot be reached the request answers 503 (``when_unavailable="closed"``, the
    default) or passes (``"open"``).

    An allowed request that memory can decide (Batched counters already in the cache: the common
    answer) is handled by native code (``_native.RateLimitCore``): no Python frame of the
    middleware's runs, and the app's own awaitable is returned. Every other request goes through
    ``_slow``.
    """

    def __init__(
        self,
        app: ASGIApp,
        store: Store,
        limits: Sequence[Tuple[Limit, Optional[Callable[[Scope], Optional[str]]]]] = (),
        cost: Optional[Callable[[Scope], int]] = None,
        shadow: bool = False,
        when_unavailable: str = "closed",
        fields: str = "all",
    ) -> None:
        self.app = app
        self.store = store
        self.rules = _http.RateRules(limits, cost, shadow, when_unavailable, fields)
        if not isinstance(store, Store):
            raise InvalidArgument(f"store is a tollgate.Store, not {type(store).__name__}")
        self._configure(app, store, self.rules.limits, cost, self.rules.on_allowed)
        # Calls go to the native ``__call__`` (the type's call slot). Servers that tell ASGI 3 from
        # ASGI 2 by whether ``app.__call__`` is a coroutine function (uvicorn's and hypercorn's
        # ``auto`` interface) look the attribute up on the instance first, and find this.
        self.__call__ = self._asgi3  # type: ignore[method-assign]

    async def _asgi3(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The middleware called through its ``__call__`` attribute: the same native call."""
        await _native.RateLimitCore.__call__(self, scope, receive, send)

    async def _slow(self, scope: Scope, receive: Receive, send: Send, checks: List[Tuple[Limit, Any]], cost: Any) -> None:
        """Everything the native path does not answer, given the ``(limit, subject)`` pairs and
        the cost it found: a counter not in memory, a denial, an error."""
        rules = self.rules
        try:
            decision = self.store.try_check_all(checks, cost)
            if decision is None:
                decision = await _check_all(self.store, checks, cost)
        except TollgateError as error:
            refusal = rules.refused(error)
            if refusal is not None:
                await _answer(send, refusal)
            else:
                await self.app(scope, receive, send)
            return
        if not decision.allowed:
            refusal = rules.denied(decision)
            if refusal is not None:
                await _answer(send, refusal)
                return
        if rules.on_allowed is None:
            await self.app(scope, receive, send)
            return
        fields = decision.asgi_headers(retry_after=False, only=rules.on_allowed)

        def send_with_fields(message: Message) -> Awaitable[None]:
            # A plain function returning the server's awaitable: no coroutine of its own per
            # message (ASGI asks for an awaitable callable, not a coroutine function).
            if message["type"] == "http.response.start":
                # Each message is the app's own, made for this send: extended in place.
                message["headers"] = [*message.get("headers", ()), *fields]
            return send(message)

        await self.app(scope, receive, send_with_fields)
