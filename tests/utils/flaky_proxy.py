"""An HTTP proxy on loopback that answers 503 to the first N requests (and to every request
for a path containing one of `failing_paths`), and forwards the rest; each PUT after waiting
`put_delay_s` (a slow store), counted in `puts` once forwarded.

Used to prove that the MinIO store retries server errors with backoff against a real server,
and to make a store that answers its health probe but fails to store clips.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FlakyProxy:
    def __init__(self, upstream: str, failures: int, failing_paths: tuple[str, ...] = ()) -> None:
        self.upstream = upstream
        self.failures_left = failures
        self.requests = 0
        self.put_delay_s = 0.0
        self.puts = 0
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                with proxy._lock:
                    proxy.requests += 1
                    fail = proxy.failures_left > 0
                    if fail:
                        proxy.failures_left -= 1
                    fail = fail or any(part in self.path for part in failing_paths)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if self.command == "PUT" and proxy.put_delay_s:
                    time.sleep(proxy.put_delay_s)
                conn = http.client.HTTPConnection(proxy.upstream, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers))
                response = conn.getresponse()
                data = response.read()
                if self.command == "PUT":
                    with proxy._lock:
                        proxy.puts += 1
                self.send_response(response.status)
                head = self.command == "HEAD"  # no body, but the real Content-Length
                for key, value in response.getheaders():
                    skip = ("transfer-encoding", "connection") + (
                        () if head else ("content-length",)
                    )
                    if key.lower() not in skip:
                        self.send_header(key, value)
                if not head:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    def __enter__(self) -> FlakyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
