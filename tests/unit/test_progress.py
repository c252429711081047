"""Progress output: plain lines when stderr is not a terminal, and a grid ETA weighted by run cost."""
from __future__ import annotations

import io

import pytest

from benchmark.core import progress
from benchmark.core.errors import UserError


def _spec(method: str, epochs: int, ratio: float):
    from tests.conftest import smoke_spec

    return smoke_spec(method, epochs=epochs, ratio=ratio)


def test_mode_follows_the_terminal_and_the_environment(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv("MLRPL_PROGRESS", raising=False)
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert progress.mode() == "plain"
    monkeypatch.setattr("sys.stderr", Tty())
    assert progress.mode() == "bar"
    monkeypatch.setenv("MLRPL_PROGRESS", "plain")
    assert progress.mode() == "plain"
    monkeypatch.setenv("MLRPL_PROGRESS", "fancy")
    with pytest.raises(UserError, match="MLRPL_PROGRESS='fancy' is not valid"):
        progress.mode()


def test_plain_progress_writes_a_start_line_throttled_updates_and_an_end_line():
    out = io.StringIO()
    shown = progress.PlainProgress(total=4, desc="images", unit="img", interval=3600, stream=out)
    shown.set_description("images")
    for _ in range(4):
        shown.update(1)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("images: 0/4 img (") and lines[-1].startswith("images: 4/4 img (")
    assert len(lines) == 2                  # the updates in between fall inside the interval
    assert "\r" not in out.getvalue()


def test_grid_eta_weighs_runs_by_cost_and_counts_epochs_of_runs_in_training(monkeypatch):
    from benchmark.core.registry import discover, get_method
    from benchmark.launch.progress import GridProgress

    discover()
    monkeypatch.setenv("MLRPL_PROGRESS", "plain")
    heavy, light = _spec("hst", 4, 0.5), _spec("partial_bce", 4, 0.5)
    cost_heavy = get_method("hst").card.relative_cost * 4
    cost_light = get_method("partial_bce").card.relative_cost * 4
    assert cost_heavy > cost_light
    grid = GridProgress([heavy, light], done=[], show=False)
    assert grid.seconds_left() is None
    grid.epoch(heavy, 2, 4)
    assert grid.fraction() == pytest.approx(0.5 * cost_heavy / (cost_heavy + cost_light))
    grid.run_done(heavy)
    # one run of two is done, but it was the expensive one: the share done is its cost share
    assert grid.fraction() == pytest.approx(cost_heavy / (cost_heavy + cost_light))
    grid.training_start -= 100.0              # 100 s spent training the heavy run
    assert grid.seconds_left() == pytest.approx(100.0 * cost_light / cost_heavy, rel=0.01)
    assert grid.summary().startswith("1/2 runs done (")


def test_runs_done_before_the_grid_started_do_not_count_as_speed(monkeypatch):
    from benchmark.core.registry import discover
    from benchmark.launch.progress import GridProgress

    discover()
    first, second = _spec("an", 4, 0.3), _spec("an", 4, 0.7)
    grid = GridProgress([first, second], done=[first.run_id], show=False)
    assert grid.fraction() == pytest.approx(0.5)
    assert grid.seconds_left() is None        # nothing trained in this process yet


def test_time_spent_preparing_data_does_not_enter_the_eta(monkeypatch):
    from benchmark.core.registry import discover
    from benchmark.launch.progress import GridProgress

    discover()
    first, second = _spec("an", 4, 0.3), _spec("an", 4, 0.7)
    grid = GridProgress([first, second], done=[], show=False)
    grid.start -= 600.0                       # ten minutes of dataset and feature preparation
    grid.training_started()
    grid.training_start -= 10.0               # then 10 s of training finish the first run
    grid.run_done(first)
    assert grid.seconds_left() == pytest.approx(10.0, rel=0.05)
    assert "10 min" in grid.summary()         # the elapsed time shown still counts the preparation
