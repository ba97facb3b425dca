"""Read or peek at what a client has sent, without waiting and whatever class wraps its socket."""

from __future__ import annotations

import socket

_DONTWAIT = socket.MSG_DONTWAIT
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def take(sock: socket.socket, size: int, flags: int = _DONTWAIT) -> bytes | None:
    """Return up to `size` bytes waiting on `sock`, taking them off, without waiting.

    None while the client has sent nothing yet; b"" once it has closed (or reset) the
    connection. The plain socket's recv, so a wrapping class's own reads are not involved.
    """
    try:
        return socket.socket.recv(sock, size, flags)
    except BlockingIOError:
        return None
    except OSError:
        return b""


def peek(sock: socket.socket, size: int) -> bytes | None:
    """As `take`, leaving the bytes on the socket."""
    return take(sock, size, _PEEK)


def has_bytes(sock: socket.socket) -> bool:
    """Tell whether the client has sent anything yet (or closed), without waiting."""
    return peek(sock, 1) is not None


def send_now(sock: socket.socket, data: bytes) -> bool:
    """Send `data` without waiting; tell whether all of it went (else the client is not reading)."""
    try:
        return socket.socket.send(sock, data, _DONTWAIT) == len(data)
    except OSError:
        return False
