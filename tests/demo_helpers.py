"""The demo as a real server: ``python app.py`` in a subprocess on a free port, and what its tests share."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from vidllm.api import CHECKPOINTS_DIR
from vidllm.testing.processes import free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MODEL_DIR = CHECKPOINTS_DIR / "default"
HAS_DEFAULT_MODEL = (DEFAULT_MODEL_DIR / "vidllm_config.json").is_file()
NO_DEFAULT_MODEL = (
    f"the bundled default model is not there yet ({DEFAULT_MODEL_DIR}/vidllm_config.json is missing); "
    "its expected answers need the trained model"
)
# Seed 3's random LM gives a non-empty answer to the featured example (seeds 0 and 5 answer with
# nothing but an end token), so streaming has pieces to show; a crop ratio of 0.5 makes the 4x4
# toy grid's RoI smaller than the frame, so boxes are drawn.
TINY_SEED = 3
TINY_REDUCER = {"num_frames": 8, "slow_frames": 2, "middle_frames": 2, "fast_grid": [2, 2], "roi_ratio": 0.5}


def save_tiny_model(directory: Path) -> Path:
    """The tiny random VideoLLM the demo tests serve, saved to ``directory``."""
    from vidllm.testing.tiny import tiny_video_llm

    tiny_video_llm(seed=TINY_SEED, reducer=TINY_REDUCER).save_pretrained(directory)
    return directory


class DemoServer:
    """``python app.py --model MODEL --port PORT ...`` (or another ``launcher`` taking the same
    flags, such as ``scripts/demo.sh``) and a way to reach it."""

    def __init__(
        self,
        model: str | Path,
        workdir: Path,
        *extra_args: str,
        timeout: float = 600.0,
        launcher: list[str] | None = None,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.log = workdir / f"demo-{self.port}.log"
        env = {
            **os.environ,
            "GRADIO_TEMP_DIR": str(workdir / "gradio-uploads"),
            "MPLCONFIGDIR": str(workdir / "matplotlib"),
        }
        launcher = launcher or [sys.executable, str(ROOT / "app.py")]
        command = [*launcher, "--model", str(model), "--port", str(self.port)]
        self._log_file = self.log.open("w")
        self.process = subprocess.Popen(
            [*command, *extra_args], stdout=self._log_file, stderr=subprocess.STDOUT, env=env, cwd=ROOT
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self._log_file.close()
                raise RuntimeError(f"app.py exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "config", timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"app.py did not come up in {timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.5)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def client(self):
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # the app turns SIGTERM into a clean shutdown
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
