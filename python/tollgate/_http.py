"""What the ASGI and WSGI middlewares share: the answers they give (problem+json bodies, the
503 that says no more than a client may know), which response header fields are stored, and
the request's fingerprint. The same words and statuses as tollgate's tower layers."""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import Any, Callable, Iterable, List, Optional, Sequence, Tuple

from ._errors import CostTooLarge, InvalidArgument, TollgateError
from . import _native
from ._keeper import LeaseKeeper
from ._native import Decision, Limit, Store

logger = logging.getLogger("tollgate")

#: Header fields about one connection, never stored with a response (the tower layer's list).
HOP_BY_HOP = frozenset(_native.HOP_BY_HOP)

#: ``Retry-After`` of a 409 for a duplicate in flight: a poll hint, in seconds.
IN_FLIGHT_RETRY_AFTER = "1"

#: ``Retry-After`` of a 503 when the store cannot record the request now.
UNAVAILABLE_RETRY_AFTER = "1"

#: The detail of a 503: all a client may know, and what to do.
TEMPORARY_DETAIL = "the service cannot record this request right now; retry later"

#: The detail of a 500 for a store failure.
LASTING_DETAIL = "the service failed to process this request"

#: The header a replayed response carries.
IDEMPOTENT_REPLAYED: str = _native.IDEMPOTENT_REPLAYED

#: The ``fields=`` of a rate middleware: which fields an allowed answer carries.
FIELDS_ON_ALLOWED = {"all": "all", "ietf": "ietf", "denials": None}

#: The subject every request is counted under by a limit without a subject function (the tower
#: layer's global subject).
GLOBAL_SUBJECT: str = _native.GLOBAL_SUBJECT

DEFAULT_METHODS = ("POST", "PUT", "PATCH", "DELETE")
DEFAULT_MAX_BODY_BYTES = 1_048_576

Headers = List[Tuple[str, str]]


class Answer:
    """A response the middleware gives itself: status, header fields, body."""

    __slots__ = ("status", "headers", "body")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


def problem(status: int, title: str, detail: str, headers: Optional[Headers] = None) -> Answer:
    """An ``application/problem+json`` answer (RFC 9457)."""
    body = json.dumps(
        {"type": "about:blank", "title": title, "status": status, "detail": detail},
        separators=(",", ":"),
    ).encode()
    fields = [("content-type", "application/problem+json")]
    fields.extend(headers or ())
    return Answer(status, fields, body)


def unavailable(title: str, error: TollgateError) -> Answer:
    """The answer when the store could not serve a request: 503 with ``Retry-After`` when a retry
    later can work, else 500; the body in fixed words (never the error's own text, which may hold
    a path or a server's message). The cause goes to the ``tollgate`` logger only."""
    logger.warning("%s: %s: %s", title, type(error).__name__, error)
    if error.temporary:
        return problem(503, title, TEMPORARY_DETAIL, [("retry-after", UNAVAILABLE_RETRY_AFTER)])
    return problem(500, title, LASTING_DETAIL)


def begin_error(error: TollgateError) -> Answer:
    """The answer to a begin that raised: a bad key is the client's (400), the rest the store's."""
    if isinstance(error, InvalidArgument):
        return problem(400, "Idempotency-Key is malformed", str(error))
    return unavailable("Idempotency store unavailable", error)


def missing_key() -> Answer:
    return problem(400, "Idempotency-Key is missing", "this endpoint requires an Idempotency-Key header")


def malformed_key(reason: str) -> Answer:
    return problem(400, "Idempotency-Key is malformed", reason)


def unidentified() -> Answer:
    return problem(
        401,
        "Caller not identified",
        "this endpoint needs an identified caller for its Idempotency-Key",
    )


def too_large(limit: int) -> Answer:
    return problem(413, "Request body too large", f"bodies up to {limit} bytes are accepted")


def in_flight() -> Answer:
    # A poll hint, not the lease's remaining time: the lease is kept alive while its handler
    # runs, so its expiry says nothing about when the answer is ready.
    return problem(
        409,
        "Request in progress",
        "a request with this Idempotency-Key is being processed; retry later",
        [("retry-after", IN_FLIGHT_RETRY_AFTER)],
    )


def mismatch() -> Answer:
    return problem(
        422,
        "Idempotency-Key reused",
        "this Idempotency-Key was used for a different request",
    )


def default_store_when(status: int) -> bool:
    """Responses below 500 are stored and replayed; for a 5xx the key is released."""
    return status < 500


def stored_headers(headers: Iterable[Tuple[bytes, bytes]]) -> List[Tuple[bytes, bytes]]:
    """The response header fields worth storing: all but hop-by-hop ones."""
    return [(n, v) for n, v in headers if n.decode("latin-1").lower() not in HOP_BY_HOP]


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def status_line(status: int) -> str:
    return f"{status} {reason_phrase(status)}"


class IdempotencySettings:
    """An idempotency middleware's keywords, checked, and its lease keeper (made on first use,
    in the process that serves)."""

    def __init__(
        self,
        store: Store,
        key_scope: Optional[Callable[[Any], Optional[str]]],
        methods: Sequence[str],
        key_required: bool,
        wait: Optional[float],
        max_body_bytes: int,
        store_when: Optional[Callable[[int], bool]],
    ) -> None:
        if max_body_bytes < 0:
            raise InvalidArgument("max_body_bytes must be ≥ 0")
        if wait is not None and wait < 0:
            raise InvalidArgument("wait must be ≥ 0 seconds, or None")
        self.store = store
        self.key_scope = key_scope
        self.methods = frozenset(method.upper() for method in methods)
        self.key_required = key_required
        self.store_when = store_when or default_store_when
        self._keeper: Optional[LeaseKeeper] = None

    def key_space(self, request: Any) -> Optional[str]:
        """The request's key space: one for everyone without ``key_scope``; ``None`` (refused
        with 401) when ``key_scope`` finds no identity."""
        return "default" if self.key_scope is None else self.key_scope(request)

    def lease_keeper(self) -> LeaseKeeper:
        if self._keeper is None:
            self._keeper = LeaseKeeper(self.store.lease_ttl)
        return self._keeper


class RateRules:
    """A rate middleware's limits, each with its subject function (``None``: one global
    counter), and the request's cost."""

    def __init__(
        self,
        limits: Sequence[Tuple[Limit, Optional[Callable[[Any], Optional[str]]]]],
        cost: Optional[Callable[[Any], int]],
        shadow: bool,
        when_unavailable: str,
        fields: str = "all",
    ) -> None:
        if when_unavailable not in ("closed", "open"):
            raise InvalidArgument(f'when_unavailable is "closed" or "open", not {when_unavailable!r}')
        if fields not in FIELDS_ON_ALLOWED:
            raise InvalidArgument(f'fields is "all", "ietf" or "denials", not {fields!r}')
        #: Which fields an allowed answer carries: every one, the IETF pair, or none.
        self.on_allowed = FIELDS_ON_ALLOWED[fields]
        self.limits = [(limit, subject) for limit, subject in limits]
        for limit, subject in self.limits:
            if not isinstance(limit, Limit):
                raise InvalidArgument(f"limits holds (Limit, subject) pairs, not {limit!r}")
            if subject is not None and not callable(subject):
                raise InvalidArgument("a limit's subject is a callable or None")
        self.cost = cost
        self.shadow = shadow
        self.fail_open = when_unavailable == "open"

    def checks(self, request: Any) -> List[Tuple[Limit, str]]:
        """The ``(limit, subject)`` pairs that apply to ``request``."""
        checks = []
        for limit, subject in self.limits:
            if subject is None:
                checks.append((limit, GLOBAL_SUBJECT))
            else:
                who = subject(request)
                if who is not None:
                    checks.append((limit, who))
        return checks

    def cost_of(self, request: Any) -> int:
        return 1 if self.cost is None else self.cost(request)

    def refused(self, error: TollgateError) -> Optional[Answer]:
        """The answer to a check that raised, or ``None`` to let the request through."""
        if self.shadow:
            # A dry run never takes the service down with its limiter.
            return None
        if isinstance(error, CostTooLarge):
            return problem(429, "Request too costly", str(error))
        if error.temporary:
            logger.warning("rate limiter unavailable (%s): %s", "open" if self.fail_open else "closed", error)
            if self.fail_open:
                return None
            return unavailable("Rate limiter unavailable", error)
        return unavailable("Rate limiter failed", error)

    def denied(self, decision: Decision) -> Optional[Answer]:
        """The 429 for a denial, or ``None`` when the request goes on (allowed, or shadow)."""
        if decision.allowed:
            return None
        if self.shadow:
            logger.info("shadow rate denial: %s", decision.policy)
            return None
        answer = problem(
            429,
            "Too many requests",
            f"the {decision.policy} limit is exhausted; retry later",
        )
        answer.headers.extend((n.lower(), v) for n, v in decision.headers())
        return answer

    def fields(self, decision: Decision) -> Headers:
        """The header fields an allowed (or shadow-passed) response carries: no ``Retry-After``."""
        if self.on_allowed is None:
            return []
        return [(n.lower(), v) for n, v in decision.headers() if n != "Retry-After" and (self.on_allowed == "all" or n.startswith("RateLimit"))]
