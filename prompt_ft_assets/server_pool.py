"""A pool of OpenAI-compatible inference servers that serve the same model file.

Each request goes to the server with the fewest requests in flight from this process. A tie goes
to the server after the one picked last, so idle servers take turns. The chosen server is not part
of the cache key, because every server in the pool must serve the GGUF file whose sha256 the spec
gives.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator, Sequence


class ServerPool:
    """Base URLs of interchangeable servers, with in-flight and sent request counts per server."""

    def __init__(self, urls: Sequence[str]):
        normalized = [url.rstrip("/") for url in urls]
        if not normalized:
            raise ValueError("a server pool needs at least one URL")
        duplicates = sorted({url for url in normalized if normalized.count(url) > 1})
        if duplicates:
            raise ValueError(f"server URLs {duplicates} appear more than once; list each server once")
        self.urls = normalized
        self._in_flight = [0] * len(normalized)
        self._sent = [0] * len(normalized)
        self._last = len(normalized) - 1
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.urls)

    def _pick(self) -> int:
        """Index of the least busy server, scanning from the one after the last pick so ties rotate."""
        count = len(self.urls)
        order = [(self._last + 1 + offset) % count for offset in range(count)]
        return min(order, key=lambda index: self._in_flight[index])

    @contextlib.contextmanager
    def lease(self) -> Iterator[str]:
        """Reserve the least busy server for one request and yield its base URL."""
        with self._lock:
            index = self._pick()
            self._last = index
            self._in_flight[index] += 1
            self._sent[index] += 1
        try:
            yield self.urls[index]
        finally:
            with self._lock:
                self._in_flight[index] -= 1

    def requests_sent(self) -> dict[str, int]:
        """Number of requests sent to each server so far, by base URL."""
        with self._lock:
            return dict(zip(self.urls, self._sent))
