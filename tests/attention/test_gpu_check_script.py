"""bench/gpu_attention_check.py on a machine without CUDA: exit 0 and say nothing was tested."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_gpu_attention_check_exits_0_with_a_message_without_cuda(tmp_path):
    out = tmp_path / "gpu.json"
    res = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_attention_check.py"), "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr
    assert "no CUDA device" in res.stdout and "nothing was tested" in res.stdout
    assert not out.exists()  # no result file claims a GPU figure
