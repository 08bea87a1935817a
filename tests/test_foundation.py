"""The installed environment: torchvision's import mend, the console script, the set-up script,
and the process-group runner the multi-process tests use."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from vidllm._compat import torchvision_ops

REPO = Path(__file__).resolve().parents[1]


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=300
    )


def test_torchvision_stack_imports_in_a_fresh_interpreter():
    """timm, open_clip and peft import torchvision; the .pth hook must make that work everywhere."""
    proc = _python(
        """
        import torchvision, timm, open_clip, peft, transformers, torch
        print(hasattr(torch.ops.torchvision, "nms"))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"


def test_hook_leaves_existing_ops_alone():
    """Where torchvision's compiled ops loaded (a whole install), nothing is redefined."""
    proc = _python(
        """
        import torch
        lib = torch.library.Library("torchvision", "DEF")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl("nms", lambda d, s, t: torch.tensor([42]), "CompositeExplicitAutograd")
        from vidllm._compat.torchvision_ops import define_missing_ops
        print(define_missing_ops(), torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5).tolist())
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[] [42]"


def _naive_nms(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> list[int]:
    def iou(a, b):
        ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = ix * iy
        union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
        return inter / union

    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
    keep: list[int] = []
    for i in order:
        if all(iou(boxes[i].tolist(), boxes[j].tolist()) <= threshold for j in keep):
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_nms_reference_matches_naive_greedy(seed, threshold):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(40, 2, generator=g) * 50
    wh = torch.rand(40, 2, generator=g) * 30 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    scores = torch.rand(40, generator=g)
    assert torchvision_ops.nms_reference(boxes, scores, threshold).tolist() == _naive_nms(
        boxes, scores, threshold
    )


def test_registered_nms_op_runs():
    import torchvision  # noqa: F401  (the hook has run)

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60.0]])
    out = torch.ops.torchvision.nms(boxes, torch.tensor([0.9, 0.8, 0.7]), 0.5)
    assert out.tolist() == [0, 2]


def test_console_script_version_and_info():
    exe = Path(sys.executable).with_name("vidllm")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=True)
    from vidllm import __version__

    assert version.stdout.strip() == f"vidllm {__version__}"
    info = subprocess.run([exe, "info", "--json"], capture_output=True, text=True, check=True)
    data = json.loads(info.stdout)
    assert data["packages"]["torch"].startswith("2.13")
    assert data["cuda_available"] == torch.cuda.is_available()
    assert data["cpu"]["isa"] == torch.backends.cpu.get_cpu_capability()
    assert set(data["cpu"]["flags"]) <= {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    text = subprocess.run([exe, "info"], capture_output=True, text=True, check=True).stdout
    assert f"torch ISA {data['cpu']['isa']}" in text


def test_setup_script_is_idempotent():
    """A second run of the set-up installs nothing (the stamp matches)."""
    if not (REPO / ".venv" / ".vidllm-test.stamp").exists():
        pytest.skip("the suite is not running from the .venv that scripts/setup_env.sh made")
    proc = subprocess.run(
        [REPO / "scripts" / "setup_env.sh", "test"],
        capture_output=True,
        text=True,
        timeout=60,
        env=os.environ,
    )
    assert proc.returncode == 0, proc.stderr
    assert "up to date" in proc.stdout


def test_process_group_runner_kills_every_process_and_shows_where_they_were(tmp_path):
    """Past its limit, :func:`run_process_group` aborts the whole group (the launcher and the child
    it started), shows their Python stacks and leaves no process running."""
    from vidllm.testing.processes import ProcessGroupTimeoutError, run_process_group

    pid_file = tmp_path / "child.pid"
    launcher = textwrap.dedent(
        f"""
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        open({str(pid_file)!r}, "w").write(str(child.pid))
        time.sleep(600)
        """
    )
    with pytest.raises(ProcessGroupTimeoutError, match="did not finish within 5 s") as error:
        run_process_group([sys.executable, "-c", launcher], timeout=5)
    assert "Fatal Python error: Aborted" in str(error.value)
    assert "time.sleep" in str(error.value) or "<module>" in str(error.value)
    status = Path(f"/proc/{pid_file.read_text()}/status")
    assert not status.exists() or "\tZ" in status.read_text()  # gone, or dead and not yet reaped

    done = run_process_group([sys.executable, "-c", "import sys; print('out'); print('err', file=sys.stderr)"],
                             timeout=60)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, "out\n", "err\n")
