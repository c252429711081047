"""The README is the contract with a new user: its commands and its worked example must work."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()


def _block_after(marker: str) -> str:
    start = README.index(marker)
    match = re.search(r"```python\n(.*?)```", README[start:], re.S)
    return match.group(1)


def test_install_and_test_commands_are_the_ones_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    assert 'python -m pip install ".[test]"' in README and 'python -m pip install ".[test]"' in ci
    assert "python -m pytest -q" in README and "python -m pytest -q" in ci


def test_add_a_method_example_is_short_and_lands_in_the_leaderboard(tmp_path):
    code = _block_after("## Add a method")
    assert len(code.strip().splitlines()) < 50
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "assume_negative.py").write_text(code)
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "run_benchmark.py", "--profile", "smoke", "--plugins", str(plugins),
                           "--methods", "partial_bce", "assume_negative", "--ratios", "0.5", "--epochs", "1",
                           "--out", str(out)], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    board = (out / "leaderboard.md").read_text()
    assert "| assume_negative" in board and "| partial_bce" in board
