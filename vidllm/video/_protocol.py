"""Framing between the parent and a decode worker over a Unix socket pair.

Headers are JSON, never pickle: the worker parses untrusted media with C libraries, so the parent
must not execute anything the worker sends. Frames travel as one raw payload after the header and
are received straight into the final numpy array (one kernel copy each way). With 4 MiB socket
buffers this is several times faster than a fresh ``multiprocessing.shared_memory`` block per
request, which pays page faults on both sides (``benchmarks/video_decode.py`` measures both).
"""

from __future__ import annotations

import json
import socket
import struct
import time

__all__ = [
    "SOCKET_BUFFER_BYTES",
    "WorkerGoneError",
    "recv_json",
    "recv_payload",
    "send_json",
    "send_payload",
]

SOCKET_BUFFER_BYTES = 4 << 20
_LENGTH = struct.Struct("<Q")
_MAX_HEADER_BYTES = 64 << 20


class WorkerGoneError(Exception):
    """The other end closed the socket (the worker died or the parent went away)."""


def configure(sock: socket.socket) -> None:
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER_BYTES)


def send_json(sock: socket.socket, obj: dict) -> None:
    data = json.dumps(obj, separators=(",", ":")).encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)


def send_payload(sock: socket.socket, buffer) -> None:
    sock.sendall(memoryview(buffer).cast("B"))


def _settimeout(sock: socket.socket, deadline: float | None) -> None:
    if deadline is None:
        sock.settimeout(None)
        return
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    sock.settimeout(remaining)


def _recv_into(sock: socket.socket, view: memoryview, deadline: float | None) -> None:
    got = 0
    while got < len(view):
        _settimeout(sock, deadline)
        try:
            n = sock.recv_into(view[got:])
        except TimeoutError:  # socket.timeout is an alias of TimeoutError since 3.10
            raise
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise WorkerGoneError(str(exc)) from None
        if n == 0:
            raise WorkerGoneError("end of stream")
        got += n


def recv_json(sock: socket.socket, deadline: float | None = None) -> dict:
    """Next header; raises ``TimeoutError`` past ``deadline`` (time.monotonic) and ``WorkerGoneError`` at EOF."""
    head = bytearray(_LENGTH.size)
    _recv_into(sock, memoryview(head), deadline)
    (length,) = _LENGTH.unpack(head)
    if length > _MAX_HEADER_BYTES:
        raise WorkerGoneError(f"header of {length} bytes is not from a worker of ours")
    data = bytearray(length)
    _recv_into(sock, memoryview(data), deadline)
    obj = json.loads(data)
    if not isinstance(obj, dict):
        raise WorkerGoneError("malformed header")
    return obj


def recv_payload(sock: socket.socket, buffer, deadline: float | None = None) -> None:
    """Fill ``buffer`` (any writable buffer, e.g. a numpy array) with the next raw payload."""
    _recv_into(sock, memoryview(buffer).cast("B"), deadline)
