"""Supervised decode workers: a small pool of ``python -m vidllm.video._worker`` processes.

Design, and why:
- **Fresh interpreters** (``subprocess`` + a socket pair), not ``fork``: a forked child inherits
  decord readers and threads, which abort decord (REFERENCE.md). This is ``spawn`` semantics
  without ``multiprocessing``'s re-import of the caller's ``__main__`` module, so a script without
  an ``if __name__ == "__main__"`` guard still works, and the worker never imports torch.
- **One request per worker at a time**, so no decord reader is ever shared by threads; the pool
  lets ``num_workers`` threads decode at once, and further callers wait for a free worker.
- **Supervision**: every request has a deadline (the worker is SIGKILLed and replaced past it ->
  ``DecodeTimeoutError``); a worker that dies (decord's SIGABRT, the kernel's OOM killer, anyone's
  SIGKILL) is reaped and replaced, and the request gets ``DecoderCrashedError``; the worker's memory
  is capped with ``RLIMIT_AS`` during each request.
- **Lifecycle**: workers start lazily, each in its own session (a terminal's Ctrl-C does not kill
  them mid-request), are reaped at interpreter exit (``atexit``), exit by themselves when the parent
  dies, and a forked child of the parent starts its own pool instead of sharing the parent's
  sockets (``os.register_at_fork``).
- Workers' stderr (FFmpeg's complaints about broken files) is forwarded to the
  ``vidllm.video.worker`` logger at DEBUG level; the last lines explain crashes.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

import vidllm
from vidllm.video import _protocol
from vidllm.video.errors import (
    ERRORS_BY_NAME,
    CorruptVideoError,
    DecoderCrashedError,
    DecodeTimeoutError,
    VideoBackendError,
    VideoTooLargeError,
)

__all__ = ["WorkerPool", "get_pool", "resize_pool", "shutdown_pool"]

logger = logging.getLogger(__name__)
_worker_logger = logging.getLogger("vidllm.video.worker")

STARTUP_TIMEOUT_S = 120.0
"""Time for a worker to import numpy, PyAV and decord (about 0.2 s idle; far more on a loaded box)."""
_STOP_GRACE_S = 2.0
# Our package root, so the worker imports this same vidllm even when it is not installed.
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(vidllm.__file__)))


def _describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "did not exit"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        hint = {
            "SIGABRT": "the decoder aborted",
            "SIGKILL": "killed: out of memory, or by another process",
            "SIGSEGV": "the decoder crashed",
        }.get(name, "killed by a signal")
        return f"{name}, {hint}"
    return f"exit status {returncode}"


class _Worker:
    """One worker process and the parent's end of its socket. Used by one thread at a time."""

    def __init__(self) -> None:
        parent_sock, child_sock = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env.setdefault(var, "1")  # numpy needs no BLAS threads in the worker
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "vidllm.video._worker", str(child_sock.fileno())],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as exc:
            parent_sock.close()
            raise VideoBackendError(
                f"could not start a video decode worker ({exc}): check that {sys.executable} runs"
            ) from exc
        finally:
            child_sock.close()
        self.pid = self.proc.pid
        self.sock = parent_sock
        _protocol.configure(self.sock)
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self._stderr_thread = threading.Thread(
            target=self._forward_stderr, name=f"vidllm-video-worker-{self.pid}-stderr", daemon=True
        )
        self._stderr_thread.start()
        try:
            hello = _protocol.recv_json(self.sock, time.monotonic() + STARTUP_TIMEOUT_S)
        except (TimeoutError, _protocol.WorkerGoneError, OSError) as exc:
            self.kill()
            raise VideoBackendError(
                f"the video decode worker failed to start ({_describe_exit(self.proc.returncode)}; "
                f"{type(exc).__name__}); its last output: {self.last_output() or 'none'}. "
                "Check that PyAV (and decord, on x86-64) are installed: pip install av decord"
            ) from None
        self.versions = {k: hello.get(k) for k in ("av", "decord")}
        logger.debug("video decode worker %d started (%s)", self.pid, self.versions)

    def _forward_stderr(self) -> None:
        stream = self.proc.stderr
        try:
            for raw in iter(stream.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                if line:
                    self.tail.append(line)
                    _worker_logger.debug("[%d] %s", self.pid, line)
        except (OSError, ValueError):
            pass
        finally:
            stream.close()

    def last_output(self, lines: int = 3) -> str:
        return " | ".join(list(self.tail)[-lines:])

    def alive(self) -> bool:
        return self.proc.poll() is None

    def request(
        self, message: dict, deadline: float, max_output_bytes: int
    ) -> tuple[dict, np.ndarray | None]:
        """Send one request and return (header, frames); frames is None for an error reply.

        Raises ``TimeoutError`` past ``deadline`` and ``_protocol.WorkerGoneError`` if the worker died.
        """
        try:
            _protocol.send_json(self.sock, message)
        except OSError as exc:
            raise _protocol.WorkerGoneError(str(exc)) from None
        header = _protocol.recv_json(self.sock, deadline)
        if not header.get("ok"):
            return header, None
        shape = header.get("shape")
        count = len(header.get("indices", ()))
        valid = (
            isinstance(shape, list)
            and len(shape) == 4
            and all(isinstance(n, int) and n > 0 for n in shape)
            and shape[0] == count == len(header.get("timestamps", ()))
            and shape[3] == 3
            and shape[0] * shape[1] * shape[2] * 3 <= max_output_bytes
        )
        if not valid:
            raise _protocol.WorkerGoneError(
                f"malformed reply from the worker: shape {shape!r}, {count} indices"
            )
        frames = np.empty(shape, dtype=np.uint8)
        _protocol.recv_payload(self.sock, frames, deadline)
        return header, frames

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
        self._reap()

    def stop(self) -> None:
        """Ask an idle worker to exit, then make sure it did."""
        try:
            _protocol.send_json(self.sock, {"op": "stop"})
            self.proc.wait(_STOP_GRACE_S)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()

    def _reap(self) -> None:
        try:
            self.proc.wait(10.0)
        except subprocess.TimeoutExpired:
            logger.warning("video decode worker %d did not exit after SIGKILL", self.pid)
        self.sock.close()
        self._stderr_thread.join(1.0)


class WorkerPool:
    """At most ``size`` workers, each serving one request at a time; thread-safe."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._live: set[_Worker] = set()
        self._busy: set[_Worker] = set()
        self._reserved = 0  # busy slots, including workers still starting
        self._closed = False
        self.pid = os.getpid()

    # -- slots -----------------------------------------------------------------------------
    def _acquire(self) -> _Worker:
        with self._cond:
            while self._reserved >= self._size and not self._closed:
                self._cond.wait()
            if self._closed:
                raise VideoBackendError("the video decode pool was shut down; call read_video again")
            self._reserved += 1
            worker = self._idle.pop() if self._idle else None
        if worker is not None and not worker.alive():
            worker.kill()  # died while idle: reap it and start another
            with self._cond:
                self._live.discard(worker)
            worker = None
        if worker is None:
            try:
                worker = _Worker()
            except BaseException:
                with self._cond:
                    self._reserved -= 1
                    self._cond.notify()
                raise
        with self._cond:
            self._live.add(worker)
            self._busy.add(worker)
        return worker

    def _release(self, worker: _Worker, reusable: bool) -> None:
        with self._cond:
            self._busy.discard(worker)
            self._reserved -= 1
            keep = reusable and not self._closed and len(self._idle) < self._size and worker.alive()
            if keep:
                self._idle.append(worker)
            else:
                self._live.discard(worker)
            self._cond.notify()
        if not keep:
            if reusable:
                worker.stop()
            else:
                worker.kill()

    # -- requests --------------------------------------------------------------------------
    def run(self, message: dict, timeout_s: float, max_output_bytes: int) -> tuple[dict, np.ndarray]:
        """Serve one read request; raises a ``VideoError`` (worker's, crash or timeout) on failure.

        A worker that answers "retry" has too much address space mapped for this request's memory
        limit; it exits and the request goes to another worker (a fresh one at the latest).
        """
        for _attempt in range(self._size + 1):
            header, frames = self._run_once(message, timeout_s, max_output_bytes)
            if not header.get("retry"):
                return header, frames
        raise VideoTooLargeError(
            "could not be decoded within the worker memory limit: raise VideoLimits.worker_memory_bytes"
        )

    def _run_once(self, message: dict, timeout_s: float, max_output_bytes: int) -> tuple[dict, np.ndarray]:
        worker = self._acquire()
        reusable = False
        try:
            deadline = time.monotonic() + timeout_s
            try:
                header, frames = worker.request(message, deadline, max_output_bytes)
            except TimeoutError:
                worker.kill()
                raise DecodeTimeoutError(
                    f"took longer than {timeout_s:g} s to decode (VideoLimits.timeout_s), so the decoder "
                    "was stopped: the file may be damaged or very large; ask for fewer frames, a "
                    "smaller max_side or a shorter window, or raise the timeout"
                ) from None
            except (_protocol.WorkerGoneError, OSError) as exc:
                worker.kill()
                raise self._crash_error(worker, message, exc) from None
            if header.get("retry"):
                return header, None
            if frames is None:
                error = ERRORS_BY_NAME.get(header.get("error"), CorruptVideoError)
                reusable = not header.get("restart")
                if header.get("unexpected"):
                    logger.warning("video decode worker %d: %s", worker.pid, worker.last_output(6))
                raise error(str(header.get("message", "could not be decoded")))
            reusable = True
            return header, frames
        finally:
            self._release(worker, reusable)

    @staticmethod
    def _crash_error(worker: _Worker, message: dict, exc: BaseException) -> DecoderCrashedError:
        how = _describe_exit(worker.proc.returncode)
        said = worker.last_output(2)
        logger.warning("video decode worker %d died (%s): %s", worker.pid, how, said or exc)
        memory = message["limits"].get("worker_memory_bytes")
        if memory and ("bad_alloc" in said or "SIGKILL" in how):
            cause = (
                "This happens on corrupt files and when decoding needs more than the worker "
                f"memory limit ({memory / 2**30:.1f} GiB): ask for fewer frames or a smaller "
                "max_side, or re-encode the file (ffmpeg -i in.mp4 -c:v libx264 out.mp4)"
            )
        else:
            cause = (
                "The file is probably corrupt: re-encode it (e.g. ffmpeg -i in.mp4 -c:v libx264 "
                "out.mp4) and try again"
            )
        return DecoderCrashedError(
            f"made the decoder crash ({how}{'; ' + said if said else ''}). The worker was "
            f"restarted and other videos are unaffected. {cause}"
        )

    # -- management ------------------------------------------------------------------------
    def resize(self, size: int) -> None:
        with self._cond:
            self._size = size
            surplus = self._idle[size:]
            del self._idle[size:]
            self._live.difference_update(surplus)
            self._cond.notify_all()
        for worker in surplus:
            worker.stop()

    def shutdown(self) -> None:
        """Stop idle workers, kill busy ones, reap all; later requests on this pool fail."""
        with self._cond:
            self._closed = True
            idle, busy = list(self._idle), list(self._live - set(self._idle))
            self._idle.clear()
            self._live.clear()
            self._cond.notify_all()
        for worker in busy:
            worker.kill()
        for worker in idle:
            worker.stop()

    def worker_pids(self) -> dict[int, bool]:
        """{pid: busy} of the live workers (for health checks and tests)."""
        with self._cond:
            return {w.pid: w in self._busy for w in self._live}

    def _abandon_after_fork(self) -> None:
        # In a forked child: the workers belong to the parent. Close our copies of their sockets
        # (so a worker still sees EOF when the parent goes) and forget them without killing them.
        for worker in list(self._live):
            with contextlib.suppress(OSError):
                worker.sock.close()
        self._live.clear()
        self._idle.clear()
        self._busy.clear()


_pool_lock = threading.Lock()
_pool: WorkerPool | None = None


def get_pool() -> WorkerPool:
    """The process's pool, created on first use with ``get_default_limits().num_workers`` workers."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool.pid != os.getpid():
            from vidllm.video.limits import get_default_limits

            _pool = WorkerPool(get_default_limits().num_workers)
        return _pool


def resize_pool(size: int) -> None:
    with _pool_lock:
        pool = _pool
    if pool is not None:
        pool.resize(size)


def shutdown_pool() -> None:
    """Stop and reap every decode worker; the next ``read_video`` starts new ones."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None and pool.pid == os.getpid():
        pool.shutdown()


def _after_fork_in_child() -> None:
    global _pool, _pool_lock
    _pool_lock = threading.Lock()  # another thread may have held it at fork time
    if _pool is not None:
        _pool._abandon_after_fork()
    _pool = None


atexit.register(shutdown_pool)
os.register_at_fork(after_in_child=_after_fork_in_child)
