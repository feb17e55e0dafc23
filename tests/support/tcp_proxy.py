"""A TCP proxy that can hold requests back, and lose one reply: the server executes the
request, the client never hears back (as when the network breaks in the middle of a write)."""

import contextlib
import socket
import threading

from tests.support.redis_server import free_port


class ReplyLosingProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream_port`.

    After `lose_reply_to(marker)`, the first request containing `marker` is forwarded, and
    the connection is cut as soon as the server answers, without passing the answer on.
    Between `hold()` and `release()` requests wait in the proxy.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.reply_lost = threading.Event()
        self._flowing = threading.Event()
        self._flowing.set()
        self._marker: bytes | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = [self._listener]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def lose_reply_to(self, marker: bytes) -> None:
        with self._lock:
            self._marker = marker
            self.reply_lost.clear()

    def hold(self) -> None:
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()
        with self._lock:
            self._closed = True
            sockets = list(self._sockets)
        for sock in sockets:
            _close(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            except OSError:  # the server is down: so is the connection through us
                _close(client)
                continue
            with self._lock:
                if self._closed:
                    _close(client)
                    _close(upstream)
                    return
                self._sockets += [client, upstream]
            cut = threading.Event()
            threading.Thread(
                target=self._requests, args=(client, upstream, cut), daemon=True
            ).start()
            threading.Thread(
                target=self._replies, args=(upstream, client, cut), daemon=True
            ).start()

    def _requests(
        self, client: socket.socket, upstream: socket.socket, cut: threading.Event
    ) -> None:
        while data := _receive(client):
            self._flowing.wait()
            with self._lock:
                if self._marker is not None and self._marker in data:
                    self._marker = None
                    cut.set()
            try:
                upstream.sendall(data)
            except OSError:
                break
        _close(upstream)

    def _replies(
        self, upstream: socket.socket, client: socket.socket, cut: threading.Event
    ) -> None:
        while data := _receive(upstream):
            if cut.is_set():
                _close(client)
                _close(upstream)
                self.reply_lost.set()
                return
            try:
                client.sendall(data)
            except OSError:
                break
        _close(client)


def _receive(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except OSError:
        return b""


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
