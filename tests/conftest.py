"""Shared fixtures. Keep each one small and say which tests use it."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def make_clip(tmp_path_factory):
    """Write a generated clip with known frames once per session (``vidllm.testing.media.write_clip``).

    ``make_clip("name.mp4", num_frames=40, fps=10, ...)`` returns the path; the same arguments
    return the same file. Used by the video tests.
    """
    from vidllm.testing.media import write_clip

    root = tmp_path_factory.mktemp("clips")
    made: dict = {}

    def make(name: str = "clip.mp4", **kwargs):
        key = (name, tuple(sorted(kwargs.items())))
        if key not in made:
            made[key] = write_clip(root / f"{len(made)}-{name}", **kwargs)
        return made[key]

    return make
