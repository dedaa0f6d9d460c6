"""An HTTP server on loopback for the download tests (test_download.py, test_fetch.py).

Each test's server subclasses :class:`Loopback` and says how to answer a GET (:meth:`Loopback.answer`);
this class serves in threads, records every User-Agent, and logs every answer with the body bytes it
really sent: fewer than its Content-Length when a test cuts it short, or when the client hung up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SLOTS = 64  # answers that may be under way at once


class Loopback:
    """A ThreadingHTTPServer on a free 127.0.0.1 port, serving from a daemon thread until :meth:`close`."""

    def __init__(self):
        self.agents: set[str] = set()
        self._log: list = []
        self.lock, self.busy = threading.Lock(), threading.Semaphore(SLOTS)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        """Answer the GET that ``handler`` holds, through :meth:`send`."""
        raise NotImplementedError

    def send(
        self,
        handler: BaseHTTPRequestHandler,
        status: int,
        body: bytes,
        headers: dict,
        entry: Callable[[int], object],
        cut: int | None = None,
    ) -> None:
        """Answer ``status`` with ``body`` (Content-Length: all of it) and ``headers``; send only the first
        ``cut`` bytes when given. The log gets ``entry(0)`` at once, in the order of answers, and
        ``entry(bytes sent)`` in its place once the body is out."""
        with self.lock:
            at = len(self._log)
            self._log.append(entry(0))
        handler.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **headers}.items():
            handler.send_header(key, value)
        handler.end_headers()
        body = body if cut is None else body[:cut]
        sent = 0
        try:
            for i in range(0, len(body), 8192):
                handler.wfile.write(body[i : i + 8192])
                sent += len(body[i : i + 8192])
        except (BrokenPipeError, ConnectionResetError):
            pass
        self._log[at] = entry(sent)

    @property
    def requests(self) -> list:
        """The log of answers so far, once every answer under way is complete."""
        for _ in range(SLOTS):
            assert self.busy.acquire(timeout=5)
        for _ in range(SLOTS):
            self.busy.release()
        return list(self._log)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(server: Loopback) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            with server.busy:
                server.agents.add(self.headers.get("User-Agent", ""))
                server.answer(self)

    return Handler
