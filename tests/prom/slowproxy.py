"""A TCP proxy that holds every client->server chunk for `delay_s` (a slow Prometheus).

The delay is per chunk, not per connection, so requests on a kept-alive connection are slowed
too. Set `delay_s` to 0 to make it transparent again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class SlowProxy:
    def __init__(self, upstream_port: int, *, delay_s: float) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.delay_s = delay_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(self.upstream, timeout=30)
        except OSError:
            client.close()
            return
        threading.Thread(target=self._pipe, args=(server, client, 0.0), daemon=True).start()
        self._pipe(client, server, None)

    def _pipe(self, src: socket.socket, dst: socket.socket, delay: float | None) -> None:
        try:
            while chunk := src.recv(65536):
                time.sleep(self.delay_s if delay is None else delay)
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def close(self) -> None:
        self._closed = True
        self.listener.close()
