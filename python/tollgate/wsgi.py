"""WSGI middlewares (PEP 3333: Flask, Django, any WSGI app): ``IdempotencyMiddleware`` and
``RateLimitMiddleware``, with the same keywords and answers as :mod:`tollgate.asgi`; the
callables take the WSGI ``environ``.

Wrap the idempotency middleware inside the rate limit, so that a 429 is never stored::

    app.wsgi_app = RateLimitMiddleware(
        IdempotencyMiddleware(app.wsgi_app, store=store), store=store, limits=[...])
"""

from __future__ import annotations

import io
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote

from . import _http
from ._errors import InvalidArgument, TollgateError
from ._keeper import LeaseKeeper
from ._native import Acquired, InFlight, Limit, Mismatch, Replay, Store, fingerprint, parse_idempotency_key  # noqa: F401

Environ = Dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], Any]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

__all__ = ["IdempotencyMiddleware", "RateLimitMiddleware"]


def _answer(start_response: StartResponse, answer: _http.Answer) -> List[bytes]:
    headers = list(answer.headers)
    headers.append(("content-length", str(len(answer.body))))
    start_response(_http.status_line(answer.status), headers)
    return [answer.body]


def _environ_name(header: str) -> str:
    name = header.upper().replace("-", "_")
    return name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else "HTTP_" + name


class IdempotencyMiddleware:
    """Makes the covered requests of a WSGI app idempotent under an ``Idempotency-Key``; the
    behaviour of :class:`tollgate.asgi.IdempotencyMiddleware`, with ``key_scope(environ)``."""

    def __init__(
        self,
        app: WSGIApp,
        store: Store,
        key_scope: Optional[Callable[[Environ], Optional[str]]] = None,
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
        self.fingerprint_headers = [name.lower() for name in fingerprint_headers]

    def _lease_keeper(self) -> LeaseKeeper:
        return self.settings.lease_keeper()

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("REQUEST_METHOD", "GET").upper() not in self.settings.methods:
            return self.app(environ, start_response)
        sent = environ.get("HTTP_IDEMPOTENCY_KEY")
        try:
            key = parse_idempotency_key([] if sent is None else [sent])
        except InvalidArgument as reason:
            return _answer(start_response, _http.malformed_key(str(reason)))
        if key is None:
            if self.settings.key_required:
                return _answer(start_response, _http.missing_key())
            return self.app(environ, start_response)
        key_space = self.settings.key_space(environ)
        if key_space is None:
            return _answer(start_response, _http.unidentified())
        body = self._read_body(environ)
        if body is None:
            return _answer(start_response, _http.too_large(self.max_body_bytes))
        environ["wsgi.input"] = io.BytesIO(body)
        environ["CONTENT_LENGTH"] = str(len(body))
        request = fingerprint(
            body=body,
            method=environ["REQUEST_METHOD"].upper(),
            path=self._target(environ),
            headers=[
                (name, environ[_environ_name(name)])
                for name in self.fingerprint_headers
                if _environ_name(name) in environ
            ],
        )
        try:
            begun = self.store.begin(key_space, key, request, wait=self.wait)
        except TollgateError as error:
            return _answer(start_response, _http.begin_error(error))
        if isinstance(begun, Replay):
            headers = list(begun.headers)
            headers.append(("content-length", str(len(begun.body))))
            headers.append((_http.IDEMPOTENT_REPLAYED, "true"))
            start_response(_http.status_line(begun.status), headers)
            return [begun.body]
        if isinstance(begun, InFlight):
            return _answer(start_response, _http.in_flight())
        if isinstance(begun, Mismatch):
            return _answer(start_response, _http.mismatch())
        assert isinstance(begun, Acquired)
        return self._execute(environ, start_response, begun.lease)

    @staticmethod
    def _target(environ: Environ) -> str:
        """The path with its query as sent: the server's raw target when it gives one."""
        for raw in ("RAW_URI", "REQUEST_URI"):
            if environ.get(raw):
                return str(environ[raw])
        path = quote((environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")).encode("latin-1"))
        query = environ.get("QUERY_STRING", "")
        return f"{path}?{query}" if query else path

    def _read_body(self, environ: Environ) -> Optional[bytes]:
        """The whole request body, or ``None`` when over the limit."""
        stream = environ.get("wsgi.input")
        length = environ.get("CONTENT_LENGTH", "")
        if stream is None:
            return b""
        if length:
            if not length.isdigit():
                return b""
            if int(length) > self.max_body_bytes:
                return None
            return bytes(stream.read(int(length)))
        if not environ.get("wsgi.input_terminated"):
            return b""
        body = bytes(stream.read(self.max_body_bytes + 1))
        return None if len(body) > self.max_body_bytes else body

    def _execute(self, environ: Environ, start_response: StartResponse, lease: Any) -> Iterable[bytes]:
        environ["tollgate.lease"] = lease
        recorder = _Recorder(self.store.max_response_bytes)

        def recording_start(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], Any]:
            recorder.start(status, headers)
            start_response(status, headers, exc_info) if exc_info else start_response(status, headers)
            return recorder.written.append

        keeper = self._lease_keeper()
        keeper.hold(lease)
        try:
            result = self.app(environ, recording_start)
        except BaseException:
            keeper.drop(lease)
            _release(lease)
            raise
        return self._stream(result, lease, recorder)

    def _stream(self, result: Iterable[bytes], lease: Any, recorder: "_Recorder") -> Iterator[bytes]:
        """The app's answer passed on chunk by chunk, one behind: the last is held until the
        outcome is durable, so an immediate retry replays it."""
        keeper = self._lease_keeper()
        settled = False
        try:
            pending: Optional[bytes] = None
            for chunk in _in_order(result, recorder.written):
                if pending is not None:
                    yield pending
                recorder.add(chunk)
                pending = chunk
            keeper.drop(lease)
            settled = True
            self._record(lease, recorder)
            if pending is not None:
                yield pending
        except GeneratorExit:
            # The server stopped reading (the client left) mid-answer: the side effect may have
            # run, so the key stays RUNNING and a retry after the lease lapses is a recovery.
            settled = True
            raise
        finally:
            keeper.drop(lease)
            if not settled:
                # The app raised: nothing is stored, the key is given back.
                _release(lease)
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def _record(self, lease: Any, recorder: "_Recorder") -> None:
        if recorder.status is None or not recorder.storable or not self.settings.store_when(recorder.status):
            _release(lease)
            return
        try:
            lease.complete(recorder.status, recorder.body(), recorder.headers)
        except TollgateError as error:
            if isinstance(error, InvalidArgument):
                _release(lease)
            _http.logger.warning("response not recorded: %s: %s", type(error).__name__, error)


def _in_order(result: Iterable[bytes], written: List[bytes]) -> Iterator[bytes]:
    """The app's chunks in the order it made them: what it passed to ``write()`` (while it was
    called, or while it made its next chunk) before that chunk."""
    for chunk in result:
        while written:
            yield written.pop(0)
        yield chunk
    while written:
        yield written.pop(0)


class _Recorder:
    """The response as the app gives it, kept for storing up to the store's size limit."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.status: Optional[int] = None
        self.headers: List[Tuple[str, str]] = []
        self.chunks: List[bytes] = []
        self.written: List[bytes] = []
        self.size = 0
        self.storable = True

    def start(self, status: str, headers: List[Tuple[str, str]]) -> None:
        code = status.split(" ", 1)[0]
        self.status = int(code) if code.isdigit() else None
        self.headers = [(n, v) for n, v in headers if n.lower() not in _http.HOP_BY_HOP]
        self.size = sum(len(n) + len(v) for n, v in self.headers)
        self.chunks = []
        self.storable = True

    def add(self, chunk: bytes) -> None:
        if not self.storable:
            return
        self.size += len(chunk)
        if self.size > self.limit:
            self.storable = False
            self.chunks = []
            return
        self.chunks.append(bytes(chunk))

    def body(self) -> bytes:
        return b"".join(self.chunks)


def _release(lease: Any) -> None:
    try:
        if not lease.resolved:
            lease.release()
    except TollgateError as error:
        _http.logger.warning("could not release an idempotency key: %s", error)


class RateLimitMiddleware:
    """Charges each request to every limit that applies, all or nothing; the behaviour of
    :class:`tollgate.asgi.RateLimitMiddleware`, with ``subject(environ)`` and ``cost(environ)``."""

    def __init__(
        self,
        app: WSGIApp,
        store: Store,
        limits: Sequence[Tuple[Limit, Optional[Callable[[Environ], Optional[str]]]]] = (),
        cost: Optional[Callable[[Environ], int]] = None,
        shadow: bool = False,
        when_unavailable: str = "closed",
        fields: str = "all",
    ) -> None:
        self.app = app
        self.store = store
        self.rules = _http.RateRules(limits, cost, shadow, when_unavailable, fields)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        checks = self.rules.checks(environ)
        if not checks:
            return self.app(environ, start_response)
        try:
            decision = self.store.check_all(checks, self.rules.cost_of(environ))
        except TollgateError as error:
            refusal = self.rules.refused(error)
            if refusal is not None:
                return _answer(start_response, refusal)
            return self.app(environ, start_response)
        refusal = self.rules.denied(decision)
        if refusal is not None:
            return _answer(start_response, refusal)
        fields = self.rules.fields(decision)
        if not fields:
            return self.app(environ, start_response)

        def start_with_fields(status: str, headers: List[Tuple[str, str]], exc_info: Any = None) -> Any:
            headers = list(headers) + fields
            return start_response(status, headers, exc_info) if exc_info else start_response(status, headers)

        return self.app(environ, start_with_fields)
