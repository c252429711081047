"""The grid's progress: how far the whole grid is, weighted by what each run costs.

Counting finished runs gives a poor estimate of the time left: a parallel grid starts the longest
runs first (:func:`benchmark.launch.planning.longest_first`), so the first runs to finish are the
slow ones and a count-based ETA is several times too long. Here each run weighs its expected cost
(``MethodCard.relative_cost`` x epochs, the numbers the ordering uses), a run in training counts with
the fraction of its epochs done, and the time left is elapsed x (cost left / cost done).

On a terminal it draws a tqdm bar ("k/n runs" beside it); when stderr is not a terminal it writes a
plain line per finished run and at most one every 30 s in between (:mod:`benchmark.core.progress`).
"""
from __future__ import annotations

import time

from benchmark.config.run_spec import RunSpec
from benchmark.core.progress import duration, mode

PLAIN_INTERVAL = 30.0       # seconds between two plain progress lines while nothing finishes


def run_cost(spec: RunSpec) -> float:
    from benchmark.core.registry import get_method

    return float(get_method(spec.method).card.relative_cost) * max(1, int(spec.epochs))


class GridProgress:
    """Cost-weighted progress of a grid; the parts of tqdm's interface the grid uses."""

    def __init__(self, runs: list[RunSpec], done: list[str], show: bool = True, interval: float = PLAIN_INTERVAL):
        self.cost = {r.run_id: run_cost(r) for r in runs}
        self.total_runs, self.done_runs = len(runs), len(done)
        self.total = sum(self.cost.values()) or 1.0
        self.finished = sum(self.cost[r] for r in done)      # cost of finished (or skipped) runs
        self.partial: dict[str, float] = {}                  # run id -> fraction of its epochs done
        self.show, self.plain, self.interval = show, mode() == "plain", interval
        self.start = self.last_line = time.monotonic()
        self.training_start = self.start                     # reset by training_started(): data preparation
                                                             # is not training speed
        self.status, self.desc = "", "grid"
        self._counted_before = self.finished                 # done before this grid: not in the speed
        self.bar = None
        if show and not self.plain:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=round(self.total, 3), initial=round(self.finished, 3), desc="grid", dynamic_ncols=True,
                            bar_format="{desc}: {percentage:3.0f}%|{bar}| {postfix} [{elapsed}<{remaining}]")
            self._postfix()

    # ------------------------------------------------------------------ numbers
    def fraction(self) -> float:
        """Share of the grid's cost done (finished runs plus the epochs of runs in training)."""
        now = self.finished + sum(self.cost.get(k, 0.0) * f for k, f in self.partial.items())
        return min(1.0, now / self.total)

    def seconds_left(self) -> float | None:
        """Elapsed x cost left / cost done in this process; None before anything is done."""
        done = self.fraction() * self.total - self._counted_before
        if done <= 0:
            return None
        return (time.monotonic() - self.training_start) * (self.total * (1.0 - self.fraction())) / done

    def summary(self) -> str:
        left = self.seconds_left()
        eta = f", about {duration(left)} left" if left is not None and self.done_runs < self.total_runs else ""
        return (f"{self.done_runs}/{self.total_runs} runs done ({100 * self.fraction():.0f} %), "
                f"{duration(time.monotonic() - self.start)} elapsed{eta}")

    # ------------------------------------------------------------------ events
    def training_started(self) -> None:
        """The runs start now: time spent before (dataset, masks, feature maps) does not enter the ETA."""
        self.training_start = time.monotonic()

    def epoch(self, spec: RunSpec, epoch: int, max_epochs: int) -> None:
        self.partial[spec.run_id] = min(1.0, epoch / max(1, max_epochs))
        self._refresh()

    def run_done(self, spec: RunSpec) -> None:
        self.partial.pop(spec.run_id, None)
        self.finished += self.cost.get(spec.run_id, 0.0)
        self.done_runs += 1
        self._refresh(force=True)

    def set_description(self, desc: str) -> None:
        self.desc = desc
        if self.bar is not None:
            self.bar.set_description(desc, refresh=False)
            self._postfix()
        elif self.show and self.plain:
            self.write(desc)

    def set_status(self, status: str) -> None:
        """The line beside the bar (each run's epoch and val mAP); plain mode prints it with the progress."""
        self.status = status
        self._refresh()

    def write(self, line: str) -> None:
        if not self.show:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            import sys

            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    # ------------------------------------------------------------------ drawing
    def _postfix(self) -> None:
        text = f"{self.done_runs}/{self.total_runs} runs" + (f" | {self.status}" if self.status else "")
        self.bar.set_postfix_str(text, refresh=False)

    def _refresh(self, force: bool = False) -> None:
        if not self.show:
            return
        if self.bar is not None:
            self.bar.n = round(self.fraction() * self.total, 3)
            self._postfix()
            self.bar.refresh()
            return
        now = time.monotonic()
        if force or now - self.last_line >= self.interval:
            self.last_line = now
            self.write(f"grid: {self.summary()}" + (f" | {self.status}" if self.status and not force else ""))
