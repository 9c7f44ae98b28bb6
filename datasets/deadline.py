"""Deadlines for whole urllib requests, however slowly the server sends.

A socket timeout bounds each read only: a server that sends one byte a little more
often than the timeout keeps a request alive for as long as it likes. ``Deadlines``
shuts the connections of a request down when its deadline passes, so
the blocked read returns at once (as a cut connection) wherever the request is:
connect, TLS handshake, headers, a redirect or the body. The connections reach it
through the handlers of ``watched_handlers``, as soon as each socket connects.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
import urllib.request
from typing import Callable, Iterator


class Deadlines:
    """Ends the request in progress at its deadline by shutting down its connections.

    ``with Deadlines() as d:`` starts one thread that serves every request made inside
    the block, each in ``with d.request(seconds):``. (A thread started per request
    would delay that request by a scheduler wake-up: a rate limit measured just before
    it would drift.) The sockets arrive through ``add`` as they connect (redirects
    open more); duplicates of them are held, so a shutdown never reaches a file
    descriptor closed and reused meanwhile, and closed when the request ends.
    ``expired`` says whether the request passed its deadline: the error a cut
    connection raises says nothing clear.
    """

    def __init__(self) -> None:
        self.expired = False
        self._cond = threading.Condition()
        self._deadline: float | None = None  # monotonic time; None between requests
        self._socks: list[socket.socket] = []
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="request-deadlines", daemon=True)

    def __enter__(self) -> Deadlines:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    @contextlib.contextmanager
    def request(self, seconds: float) -> Iterator[Deadlines]:
        """The block of one request, cut ``seconds`` after it starts."""
        with self._cond:
            self.expired, self._deadline = False, time.monotonic() + seconds
            self._cond.notify()
        try:
            yield self
        finally:
            with self._cond:
                self._deadline = None
                for s in self._socks:
                    s.close()
                self._socks.clear()

    def add(self, sock: socket.socket) -> None:
        """Puts a socket of the request in progress under its deadline (ignored between requests)."""
        with self._cond:
            if self._deadline is None:
                return
            self._socks.append(sock.dup())
            if self.expired:
                _shutdown(self._socks[-1])

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                if self._deadline is None or self.expired:
                    self._cond.wait()
                elif (left := self._deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                else:
                    self.expired = True
                    for s in self._socks:
                        _shutdown(s)


def _shutdown(sock: socket.socket) -> None:
    try:  # the connection, not this descriptor: a read blocked on the original returns at once
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed by the other side


def _watched(base: type, watch: Callable[[socket.socket], None]) -> type:
    """``base`` (an http.client connection class) handing each socket to ``watch`` once connected,
    before any TLS handshake or byte of the exchange."""

    class Watched(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            create = self._create_connection

            def connected(*a, **kw):
                sock = create(*a, **kw)
                watch(sock)
                return sock

            self._create_connection = connected

    return Watched


def watched_handlers(watch: Callable[[socket.socket], None]) -> list[urllib.request.BaseHandler]:
    """urllib handlers for http and https (for ``build_opener``) that hand every socket they
    connect to ``watch``, e.g. ``Deadlines.add``."""
    return [_WatchedHTTP(watch), _WatchedHTTPS(watch)]


class _WatchedHTTP(urllib.request.HTTPHandler):
    def __init__(self, watch: Callable[[socket.socket], None]):
        super().__init__()
        self._connection = _watched(http.client.HTTPConnection, watch)

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(self._connection, req, **kwargs)


class _WatchedHTTPS(urllib.request.HTTPSHandler):
    def __init__(self, watch: Callable[[socket.socket], None]):
        super().__init__()
        self._connection = _watched(http.client.HTTPSConnection, watch)

    def do_open(self, http_class, req, **kwargs):
        return super().do_open(self._connection, req, **kwargs)
