"""Append-only JSON-lines shard files that survive a process killed at any instruction.

Each finished sample is one line, written with a single ``write`` on an ``O_APPEND`` descriptor and
``fsync``-ed before the next sample starts, so after a crash (SIGKILL, power loss) a shard holds
every finished sample plus at most one torn line at its end. :func:`repair` cuts that torn tail
before a process appends again, and :func:`read_records` skips a torn line in a shard that another
(still running, or never restarted) process owns. A sample is "done" exactly when its line is
complete; the merge keeps the first complete line of each id, so the merged output holds every
sample exactly once.

Files that are replaced as a whole (``samples.jsonl``, ``results.json``) go through
:func:`atomic_write`: a temporary file in the same directory, fsync, ``os.replace``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def repair(path: str | os.PathLike) -> int:
    """Cut a torn last line (no trailing newline) off ``path``; return the bytes removed."""
    path = Path(path)
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        # walk back to the last newline
        end = size
        block = 1 << 16
        keep = 0
        while end > 0:
            start = max(0, end - block)
            f.seek(start)
            chunk = f.read(end - start)
            cut = chunk.rfind(b"\n")
            if cut >= 0:
                keep = start + cut + 1
                break
            end = start
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    logger.warning("%s: removed a torn last line (%d bytes) left by an interrupted write", path, size - keep)
    return size - keep


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete JSON line of ``path`` (a torn or corrupt line is skipped with a warning)."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        torn = number == len(lines)  # no newline after it: still being written, or cut by a crash
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if not torn:
                logger.warning("%s line %d is not valid JSON; ignored", path, number)
            continue
        if torn:
            continue  # a complete-looking line without its newline may still be growing
        if isinstance(record, dict):
            records.append(record)
    return records


class ShardWriter:
    """Appends one JSON record per line to ``path``, durably (write + fsync per record)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, default=_jsonable) + "\n").encode()
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, tuples, paths: what records hold besides plain JSON."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def atomic_write(path: str | os.PathLike, text: str | bytes) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new file, never a part."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    data = text.encode() if isinstance(text, str) else text
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def dumps_jsonl(records: Iterable[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False, default=_jsonable) + "\n" for r in records)


def dumps_json(data: Any) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False, default=_jsonable) + "\n"
