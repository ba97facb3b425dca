"""Read, peek at and answer a client's socket without waiting, and without leaving the GIL.

The worker's main loop judges arriving requests while the pool's threads run the model. A
socket call through Python's `socket` module lets go of the interpreter around the system call
and must win it back after: with threads running the model, that takes up to a switch interval
each time, and a refusal made of a read and a send waited for it twice, behind every thread.
These calls cannot block (`MSG_DONTWAIT`), so the loop makes them through libc while keeping the
interpreter: a few microseconds each, instead of a turn in the line for the GIL.

Where libc cannot be loaded this way, the plain socket calls are used instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import socket
import threading

_DONTWAIT = socket.MSG_DONTWAIT
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
_NOSIGNAL = getattr(socket, "MSG_NOSIGNAL", 0)
_AGAIN = frozenset({errno.EAGAIN, errno.EWOULDBLOCK})


def _load_libc() -> tuple[object, object] | None:
    """Return libc's recv and send as calls that keep the GIL (ctypes.PyDLL), or None."""
    try:
        libc = ctypes.PyDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        recv, send = libc.recv, libc.send
    except (OSError, AttributeError):
        return None
    for call in (recv, send):
        call.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        call.restype = ctypes.c_ssize_t
    return recv, send


_LIBC = _load_libc()


class _Buffer(threading.local):
    """A receive buffer per thread, grown as asked."""

    data: ctypes.Array[ctypes.c_char] = ctypes.create_string_buffer(0)


_buffer = _Buffer()


def take(sock: socket.socket, size: int, flags: int = _DONTWAIT) -> bytes | None:
    """Return up to `size` bytes waiting on `sock`, taking them off, without waiting.

    None while the client has sent nothing yet; b"" once it has closed (or reset) the
    connection. Whatever class wraps the socket, its own reads are not involved.
    """
    if _LIBC is None:
        try:
            return socket.socket.recv(sock, size, flags)
        except BlockingIOError:
            return None
        except OSError:
            return b""
    buffer = _buffer.data
    if len(buffer) < size:
        buffer = _buffer.data = ctypes.create_string_buffer(size)
    count = _LIBC[0](sock.fileno(), buffer, size, flags)  # type: ignore[operator]
    if count < 0:
        return None if ctypes.get_errno() in _AGAIN else b""
    return buffer.raw[:count]


def peek(sock: socket.socket, size: int) -> bytes | None:
    """As `take`, leaving the bytes on the socket."""
    return take(sock, size, _PEEK)


def has_bytes(sock: socket.socket) -> bool:
    """Tell whether the client has sent anything yet (or closed), without waiting."""
    return peek(sock, 1) is not None


def send_now(sock: socket.socket, data: bytes) -> bool:
    """Send `data` without waiting; tell whether all of it went (else the client is not reading)."""
    if _LIBC is None:
        try:
            return socket.socket.send(sock, data, _DONTWAIT) == len(data)
        except OSError:
            return False
    sent = _LIBC[1](sock.fileno(), data, len(data), _DONTWAIT | _NOSIGNAL)  # type: ignore[operator]
    return bool(sent == len(data))
