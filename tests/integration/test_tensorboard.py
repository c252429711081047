"""run_benchmark.py --tensorboard: losses, diagnostics and metrics in TensorBoard event files in each
run folder, through MMEngine's TensorBoard visualizer backend; the flag changes no run id."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard", reason="the tensorboard package is not installed (pip install tensorboard)")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_tensorboard_flag_writes_event_files_in_the_run_folder(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "run_benchmark.py", "--profile", "smoke", "--methods", "partial_bce",
                          "--embeddings", "random", "--ratios", "0.5", "--epochs", "2", "--tensorboard", "--no-report",
                          "--out", str(tmp_path)], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = [p for p in tmp_path.iterdir() if (p / "done").is_file()]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/mAP", "test/mAP"} <= tags, sorted(tags)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    final = json.loads([line for line in (run / "metrics.jsonl").read_text().splitlines() if '"eval"' in line][-1])
    assert events.Scalars("test/mAP")[-1].value == pytest.approx(final["test/mAP"], rel=1e-5)
    assert "tensorboard" not in json.loads((run / "spec.json").read_text())   # not part of the run's identity
