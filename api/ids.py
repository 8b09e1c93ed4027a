"""Request ids the server makes: for reservations sent without an
Idempotency-Key (the engine's request id, unpredictable) and for operator
log lines of requests that carry none (unique only)."""

from __future__ import annotations

import itertools
import os


class RequestIds:
    """Fresh request ids: 128 random bits as 32 hex characters, like
    `uuid4().hex`, from one `os.urandom` call per 256 ids instead of one per
    id. Unpredictable on purpose: a client that could guess the next id could
    send it as its own Idempotency-Key first."""

    def __init__(self, batch: int = 256) -> None:
        self._batch = batch
        self._pool = b""
        self._at = 0
        # a forked child must not hand out its parent's remaining ids
        os.register_at_fork(after_in_child=self._drop)

    def _drop(self) -> None:
        self._pool, self._at = b"", 0

    def __call__(self) -> str:
        if self._at >= len(self._pool):
            self._pool, self._at = os.urandom(16 * self._batch), 0
        start, self._at = self._at, self._at + 16
        return self._pool[start:self._at].hex()


new_request_id = RequestIds()


class LineIds:
    """Ids for operator log lines of requests that carry none (reads, and
    requests refused before a handler): unique, not secret, so a random
    per-process prefix and a counter, 32 hex characters like the others, at
    half the cost of a random id (they are made for every read)."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a child gets its own prefix

    def _reset(self) -> None:
        self._prefix = os.urandom(10).hex()
        self._counter = itertools.count()

    def __call__(self) -> str:
        return "%s%012x" % (self._prefix, next(self._counter))


new_line_id = LineIds()
