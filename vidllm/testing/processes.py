"""Free ports, and a launcher (``torchrun``, ``accelerate launch``) run with all it starts under a
time limit that explains itself.

``subprocess.run(..., capture_output=True, timeout=...)`` is a poor fit for multi-process
launchers: on a time-out it kills the launcher but not its workers, it can wait forever for a pipe
that a surviving grandchild holds open, and it shows nothing of where the processes were stuck.
:func:`run_process_group` starts the command in a session of its own with its output in files,
and past the limit it sends every process of the group ``SIGABRT`` first (with
``PYTHONFAULTHANDLER`` set, every Python process prints the stack of each of its threads), then
``SIGKILL``, and raises :class:`ProcessGroupTimeoutError` with the end of that output.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["ProcessGroupTimeoutError", "free_port", "run_process_group"]

_DUMP_GRACE_S = 5.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ProcessGroupTimeoutError(AssertionError):
    """A command run by :func:`run_process_group` passed its time limit; the message ends with
    its last output (the Python stacks of the processes it had started)."""


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, sig)


def run_process_group(
    command: Sequence[str],
    *,
    timeout: float,
    cwd: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    tail_chars: int = 6000,
) -> subprocess.CompletedProcess:
    """Run ``command`` to completion in its own session; its stdout and stderr come back as text.

    Raises:
        ProcessGroupTimeoutError: after ``timeout`` seconds, once the whole group is killed.
    """
    env = {**(os.environ if env is None else env), "PYTHONFAULTHANDLER": "1"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True, text=True,
        )  # fmt: skip
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGABRT)
            deadline = time.monotonic() + _DUMP_GRACE_S
            while proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()
            err.seek(0)
            raise ProcessGroupTimeoutError(
                f"{' '.join(command[:6])} ... did not finish within {timeout:.0f} s; the end of its "
                f"stderr (Python stacks after SIGABRT):\n{err.read()[-tail_chars:]}"
            ) from None
        finally:
            if proc.poll() is None:  # an exception in the caller's thread (KeyboardInterrupt)
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # workers that outlived the launcher in its session would otherwise linger
        _signal_group(proc.pid, signal.SIGKILL)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out.read(), err.read())
