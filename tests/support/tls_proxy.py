"""HTTPS in front of a node, as a load balancer that terminates TLS puts it: for clients
that only speak HTTPS (Segment's destination builds ``https://{url}/...`` itself)."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator

from support.engines import TlsFiles

CHUNK_BYTES = 64 * 1024
Address = tuple[str, int]


@contextlib.contextmanager
def tls_terminator(upstream_port: int, tls: TlsFiles) -> Iterator[int]:
    """A port on the loopback that accepts TLS (``tls``' certificate) and relays each
    connection's bytes, both ways, to ``127.0.0.1:upstream_port`` over plain TCP."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    upstream = ("127.0.0.1", upstream_port)
    with socket.create_server(("127.0.0.1", 0)) as listener:
        accepting = threading.Thread(
            target=_accept, args=(listener, context, upstream), name="tls accept", daemon=True
        )
        accepting.start()
        yield listener.getsockname()[1]


def _accept(listener: socket.socket, context: ssl.SSLContext, upstream: Address) -> None:
    while True:
        try:
            client, _ = listener.accept()
        except OSError:
            return  # closed: the terminator is done
        threading.Thread(target=_relay, args=(client, context, upstream), daemon=True).start()


def _relay(client: socket.socket, context: ssl.SSLContext, upstream: Address) -> None:
    with contextlib.suppress(OSError), client:
        secure = context.wrap_socket(client, server_side=True)
        with secure, socket.create_connection(upstream) as plain:
            back = threading.Thread(target=_pump, args=(plain, secure), daemon=True)
            back.start()
            _pump(secure, plain)
            back.join()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until ``source`` ends, then end ``sink``'s writing too (or drop it on error)."""
    with contextlib.suppress(OSError):
        while chunk := source.recv(CHUNK_BYTES):
            sink.sendall(chunk)
    with contextlib.suppress(OSError):
        if isinstance(sink, ssl.SSLSocket):
            sink.close()  # TLS has no half-close
        else:
            sink.shutdown(socket.SHUT_WR)
