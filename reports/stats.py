"""The statistics a reviewer asks for, computed from the tidy run frame of :func:`reports.collect.scan_runs`.

- :func:`paired_differences` / :func:`paired_tests`: per (group, proportion) the difference of each
  method to the baseline row (``partial_bce``) and, for a method that names one in spec.json
  (``trunk_baseline``, e.g. ``ssgrl`` for HST/SARB/DSRB/SST), to its trunk baseline, paired by seed
  (same mask, same split), with a paired t-test over seeds. Fewer than :data:`MIN_PAIRS` pairs:
  "n too small" and no p-value.
- :func:`rank_summary`: the average rank of each method over (group, proportion) cells (mean over
  seeds per cell, rank 1 = best), a Friedman test, and the Nemenyi critical difference of Demšar
  (JMLR 2006) for :func:`reports.plots.fig_cd_diagram`.
- :func:`win_tie_loss`: per cell against the baseline; a tie is a difference of means within the
  seed std (the larger of the two rows' sample std; with one seed, only an exact tie).
- :func:`recovery_table`: precision/recall (%) of the labels a method recovered (metrics.jsonl
  ``kind: recovery`` at the selected epoch, else the last).
- :func:`cost_table`: train time, peak memory and test mAP per method.

Each function returns a DataFrame; :func:`statistics_markdown` renders them all (every name from a
results folder escaped with :func:`benchmark.core.escape.markdown_text`).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps
from tabulate import tabulate

from benchmark.core.escape import markdown_heading, markdown_text
from reports.summary import AVG, GROUP_KEYS, MISSING, ordered_methods, ratio_label

BASELINE = "partial_bce"
MIN_PAIRS = 3
ALPHA = 0.05
TEST_NAME = "paired t-test"
# What the rank test's "samples" are here, said wherever its result is shown.
CELLS_CAVEAT = ("The cells are known-label proportions of the same dataset (nested masks of one training set, one "
                "test set), not independent datasets as the Friedman and Nemenyi tests assume: read the ranks and the "
                "critical difference as a summary, not as significance.")


def seeds_too_few(tests: pd.DataFrame) -> str:
    """The one line that replaces the paired-test table when no cell has MIN_PAIRS seeds ('' otherwise)."""
    if tests.empty or (tests["n"] >= MIN_PAIRS).any():
        return ""
    most = int(tests["n"].max())
    return (f"No paired test: every cell has fewer than {MIN_PAIRS} seeds (at most {most}); run {MIN_PAIRS} or more "
            f"seeds (e.g. --seeds {' '.join(map(str, range(MIN_PAIRS)))}) for p-values.")
# Nemenyi: q_alpha at alpha = 0.05 for k = 2..10 classifiers (Demšar 2006, Table 5a).
Q_05 = {2: 1.960, 3: 2.343, 4: 2.569, 5: 2.728, 6: 2.850, 7: 2.949, 8: 3.031, 9: 3.102, 10: 3.164}
PAIR_COLUMNS = (*GROUP_KEYS, "method", "against", "kind", "ratio", "seed", "diff")
TEST_COLUMNS = (*GROUP_KEYS, "method", "against", "kind", "ratio", "n", "mean_diff", "std_diff", "test",
                "statistic", "p", "note")


def _rows(df: pd.DataFrame, selection: str, metric: str) -> pd.DataFrame:
    if df.empty:
        return df
    return df[(df["selection"] == selection) & df[metric].notna()]


def _baseline_variant(group: pd.DataFrame, variant: str, method: str, baseline: str) -> str | None:
    """The row of ``baseline`` in a group that ``variant`` (of ``method``) is compared with: its only
    variant, else the one named like ``variant`` with the method replaced (same preset/config)."""
    names = sorted(set(group.loc[group["method"] == baseline, "variant"]))
    if len(names) == 1:
        return names[0]
    twin = baseline + variant[len(method):]
    return twin if twin in names else None


def _baselines(group: pd.DataFrame, baseline: str) -> list[tuple[str, str, str, str]]:
    """(variant, method, baseline variant, kind) for every comparison in a group: each method
    against ``baseline`` (kind "baseline") and against its trunk baseline (kind "trunk")."""
    out = []
    trunk_of = {}
    if "trunk_baseline" in group:
        for variant, trunk in zip(group["variant"], group["trunk_baseline"]):
            if isinstance(trunk, str) and trunk:
                trunk_of[variant] = trunk
    for (variant, method), _ in group.groupby(["variant", "method"], sort=True):
        for name, kind in ((baseline, "baseline"), (trunk_of.get(variant), "trunk")):
            if not name or method == name or (kind == "trunk" and name == baseline):
                continue
            base = _baseline_variant(group, variant, method, name)
            if base is not None:
                out.append((variant, method, base, kind))
    return out


def paired_differences(df: pd.DataFrame, selection: str = "val", metric: str = "mAP",
                       baseline: str = BASELINE) -> pd.DataFrame:
    """One row per (group, method, baseline, proportion, seed) that both rows ran: method - baseline."""
    rows = _rows(df, selection, metric)
    out = []
    if rows.empty:
        return pd.DataFrame(columns=list(PAIR_COLUMNS))
    for keys, group in rows.groupby(list(GROUP_KEYS), sort=True):
        values = group.groupby(["variant", "ratio", "seed"])[metric].mean()
        for variant, _method, base, kind in _baselines(group, baseline):
            ours, theirs = values.loc[variant], values.loc[base]
            for (ratio, seed), value in ours.items():
                if (ratio, seed) in theirs.index:
                    out.append({**dict(zip(GROUP_KEYS, keys)), "method": variant, "against": base, "kind": kind,
                                "ratio": ratio, "seed": seed, "diff": value - theirs.loc[(ratio, seed)]})
    return pd.DataFrame(out, columns=list(PAIR_COLUMNS))


def paired_test(diffs: Sequence[float]) -> dict:
    """Paired t-test of differences against 0: n, mean, std, statistic, p, note."""
    d = np.asarray(list(diffs), dtype=float)
    n = len(d)
    out = {"n": n, "mean_diff": float(d.mean()) if n else math.nan,
           "std_diff": float(d.std(ddof=1)) if n > 1 else math.nan, "test": TEST_NAME,
           "statistic": math.nan, "p": math.nan, "note": ""}
    if n < MIN_PAIRS:
        out["note"] = "n too small"
    elif np.allclose(d, d[0]):
        out["note"] = "no variance" if d[0] == 0 else "constant difference"
    else:
        res = sps.ttest_1samp(d, 0.0)
        out["statistic"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def paired_tests(df: pd.DataFrame, selection: str = "val", metric: str = "mAP",
                 baseline: str = BASELINE) -> pd.DataFrame:
    """Per (group, method, baseline, proportion) the paired test over seeds, plus "avg" rows: the
    per-seed means over proportions (only seeds and methods with every proportion of the pair)."""
    pairs = paired_differences(df, selection, metric, baseline)
    out = []
    keys = [*GROUP_KEYS, "method", "against", "kind"]
    for key, sub in pairs.groupby(keys, sort=False):
        ratios = sorted(set(sub["ratio"]))
        for ratio in ratios:
            out.append({**dict(zip(keys, key)), "ratio": ratio,
                        **paired_test(sub.loc[sub["ratio"] == ratio, "diff"])})
        if len(ratios) > 1:
            full = sub.groupby("seed").filter(lambda s: set(s["ratio"]) == set(ratios))
            if not full.empty:
                out.append({**dict(zip(keys, key)), "ratio": AVG,
                            **paired_test(full.groupby("seed")["diff"].mean())})
    return pd.DataFrame(out, columns=list(TEST_COLUMNS))


def cell_means(df: pd.DataFrame, selection: str = "val", metric: str = "mAP") -> pd.DataFrame:
    """Mean and sample std over seeds per (group, variant, proportion)."""
    rows = _rows(df, selection, metric)
    if rows.empty:
        return pd.DataFrame(columns=[*GROUP_KEYS, "variant", "ratio", "mean", "std", "n"])
    return (rows.groupby([*GROUP_KEYS, "variant", "ratio"])[metric].agg(["mean", "std", "count"])
            .reset_index().rename(columns={"count": "n"}))


def critical_difference(k: int, n_cells: int, alpha: float = ALPHA) -> float:
    """Nemenyi critical difference of average ranks: q_alpha * sqrt(k (k + 1) / (6 N))."""
    if k < 2 or n_cells < 1:
        return math.nan
    if alpha == 0.05 and k in Q_05:
        q = Q_05[k]
    else:
        q = float(sps.studentized_range.ppf(1 - alpha, k, 1e4)) / math.sqrt(2)
    return q * math.sqrt(k * (k + 1) / (6.0 * n_cells))


def rank_summary(df: pd.DataFrame, selection: str = "val", metric: str = "mAP",
                 method_order: Sequence[str] | None = None) -> dict:
    """Average ranks over (group, proportion) cells in which every compared method ran.

    Returns ``{"ranks": cells x methods frame, "average": frame (method, avg_rank), "k", "n_cells",
    "friedman": {"statistic", "p"} or {"note"}, "cd": Nemenyi critical difference}``; methods that
    miss a cell are left out (listed under ``"dropped"``), so that every rank covers the same cells.
    """
    means = cell_means(df, selection, metric)
    empty = {"ranks": pd.DataFrame(), "average": pd.DataFrame(columns=["method", "avg_rank"]), "k": 0,
             "n_cells": 0, "friedman": {"note": "no data"}, "cd": math.nan, "dropped": []}
    if means.empty:
        return empty
    table = means.pivot_table(index=[*GROUP_KEYS, "ratio"], columns="variant", values="mean")
    counts = table.notna().sum()
    keep = [m for m in table.columns if counts[m] == counts.max()]
    table = table[keep].dropna()
    dropped = sorted(set(means["variant"]) - set(keep))
    if table.empty or len(keep) < 2:
        return {**empty, "dropped": dropped, "friedman": {"note": "fewer than 2 methods with common cells"}}
    ranks = table.rank(axis=1, ascending=False, method="average")
    order = ordered_methods(keep, method_order)
    average = ranks.mean().reindex(order).rename("avg_rank").reset_index().rename(columns={"variant": "method"})
    k, n = len(keep), len(table)
    if k < 3:
        friedman = {"note": "Friedman needs at least 3 methods"}
    elif n < 2:
        friedman = {"note": "n too small (one cell)"}
    else:
        res = sps.friedmanchisquare(*[table[m].to_numpy() for m in keep])
        friedman = {"statistic": float(res.statistic), "p": float(res.pvalue)}
    return {"ranks": ranks, "average": average, "k": k, "n_cells": n, "friedman": friedman,
            "cd": critical_difference(k, n), "dropped": dropped}


def cliques(average: pd.DataFrame, cd: float) -> list[list[str]]:
    """Maximal groups of methods whose average ranks lie within ``cd`` of each other (the bars of a
    CD diagram): not significantly different under the Nemenyi test."""
    ranked = average.sort_values("avg_rank")
    names, values = list(ranked["method"]), list(ranked["avg_rank"])
    out: list[list[str]] = []
    last_end = -1
    for i in range(len(values)):
        j = i
        while j + 1 < len(values) and values[j + 1] - values[i] <= cd + 1e-12:
            j += 1
        if j > i and j > last_end:
            out.append(names[i:j + 1])
            last_end = j
    return out


def win_tie_loss(df: pd.DataFrame, selection: str = "val", metric: str = "mAP",
                 baseline: str = BASELINE) -> pd.DataFrame:
    """Per method, over the (group, proportion) cells it shares with the baseline: wins, ties (the
    difference of means within the seed std) and losses."""
    means = cell_means(df, selection, metric)
    rows = _rows(df, selection, metric)
    out = []
    if means.empty:
        return pd.DataFrame(columns=["method", "against", "win", "tie", "loss", "cells"])
    indexed = means.set_index([*GROUP_KEYS, "variant", "ratio"])
    for keys, group in rows.groupby(list(GROUP_KEYS), sort=True):
        for variant, _method, base, kind in _baselines(group, baseline):
            if kind != "baseline":
                continue
            for ratio in sorted(set(group.loc[group["variant"] == variant, "ratio"])):
                a, b = (tuple(keys) + (variant, ratio)), (tuple(keys) + (base, ratio))
                if b not in indexed.index:
                    continue
                diff = indexed.loc[a, "mean"] - indexed.loc[b, "mean"]
                spread = np.nanmax([indexed.loc[a, "std"], indexed.loc[b, "std"], 0.0])
                result = "tie" if abs(diff) <= spread else ("win" if diff > 0 else "loss")
                out.append({"method": variant, "against": base, "result": result})
    if not out:
        return pd.DataFrame(columns=["method", "against", "win", "tie", "loss", "cells"])
    frame = pd.DataFrame(out)
    table = (frame.groupby(["method", "against"])["result"].value_counts().unstack(fill_value=0)
             .reindex(columns=["win", "tie", "loss"], fill_value=0).reset_index())
    table["cells"] = table[["win", "tie", "loss"]].sum(axis=1)
    table.columns.name = None
    return table


def recovery_table(df: pd.DataFrame, selection: str = "val") -> pd.DataFrame:
    """Mean precision/recall (%) of recovered labels and the mean number recovered, over seeds, per
    (group, method, proportion). Precision is over the seeds that recovered something; NaN (shown as
    "none") where no seed recovered any label."""
    cols = [*GROUP_KEYS, "method", "ratio", "precision", "recall", "recovered", "n_seeds"]
    if df.empty or "recovery_recall" not in df:
        return pd.DataFrame(columns=cols)
    rows = df[(df["selection"] == selection) & df["recovery_recall"].notna()]
    if rows.empty:
        return pd.DataFrame(columns=cols)
    if "recovery_count" not in rows:
        rows = rows.assign(recovery_count=math.nan)
    out = (rows.groupby([*GROUP_KEYS, "variant", "ratio"])
           .agg(precision=("recovery_precision", "mean"), recall=("recovery_recall", "mean"),
                recovered=("recovery_count", "mean"), n_seeds=("seed", "nunique"))
           .reset_index().rename(columns={"variant": "method"}))
    return out[cols]


def precision_text(precision, recovered) -> str:
    """A recovery cell's precision: "83.3", or "none" (with the count) where nothing was recovered."""
    if recovered is not None and math.isfinite(recovered) and recovered == 0:
        return "none (0 recovered)"
    return _num(precision)


def recovered_text(recovered) -> str:
    if recovered is None or not math.isfinite(recovered):
        return MISSING
    return f"{recovered:.0f}" if float(recovered).is_integer() else f"{recovered:.1f}"


def cost_table(df: pd.DataFrame, selection: str = "val", metric: str = "mAP") -> pd.DataFrame:
    """Per (group, method): runs, mean train time (s), mean peak memory (MB) and mean test metric
    over all its runs."""
    cols = [*GROUP_KEYS, "method", "runs", "train_seconds", "peak_memory_mb", metric]
    rows = _rows(df, selection, metric)
    if rows.empty:
        return pd.DataFrame(columns=cols)
    out = (rows.groupby([*GROUP_KEYS, "variant"])
           .agg(runs=("run_id", "nunique"), train_seconds=("train_seconds", "mean"),
                peak_memory_mb=("peak_memory_mb", "mean"), **{metric: (metric, "mean")})
           .reset_index().rename(columns={"variant": "method"}))
    return out[cols]


# ---------------------------------------------------------------- Markdown


def _num(value, digits: int = 1, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def p_text(row) -> str:
    """The test column of a paired comparison: "p = 0.012 (paired t-test, n = 3)" or the note."""
    if row["note"]:
        return f"{row['note']} (n = {row['n']})"
    return f"p = {row['p']:.3g} ({row['test']}, n = {row['n']})"


def _md(rows: list, headers: list) -> str:
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def statistics_markdown(df: pd.DataFrame, selection: str = "val", metric: str = "mAP",
                        method_order: Sequence[str] | None = None, baseline: str = BASELINE) -> str:
    """The whole ``statistics.md``."""
    lines = ["# Statistics", "",
             f"Test {metric} (%), selection `{selection}`. Differences are paired by seed (same mask and "
             f"split); {TEST_NAME} over seeds against 0 (two-sided); fewer than {MIN_PAIRS} seeds: "
             "\"n too small\", no p-value.", ""]
    tests = paired_tests(df, selection, metric, baseline)
    lines += ["## Paired differences to the baselines", ""]
    if tests.empty:
        lines += [f"(no method shares cells with {baseline} or a trunk baseline)", ""]
    few = seeds_too_few(tests)
    if few:
        lines += [few, ""]
    for keys, group in tests.groupby(list(GROUP_KEYS), sort=True):
        body = [[markdown_text(r["method"]), markdown_text(r["against"]), ratio_label(r["ratio"]),
                 _num(r["mean_diff"], signed=True), _num(r["std_diff"]), *([] if few else [p_text(r)])]
                for _, r in group.iterrows()]
        lines += [f"### {markdown_heading(' · '.join(map(str, keys)))}", "",
                  _md(body, ["method", "against", "proportion", "mean diff", "std", *([] if few else ["test"])]), ""]
    ranks = rank_summary(df, selection, metric, method_order)
    lines += ["## Average rank over (dataset, proportion) cells", ""]
    if ranks["k"]:
        fried = ranks["friedman"]
        fried_text = (f"Friedman chi² = {fried['statistic']:.2f}, p = {fried['p']:.3g}" if "p" in fried
                      else f"Friedman: {fried['note']}")
        lines += [f"{ranks['k']} methods over {ranks['n_cells']} cells (rank 1 = best); {fried_text}; Nemenyi "
                  f"critical difference (alpha {ALPHA}) = {ranks['cd']:.2f} (Demšar 2006; cd_diagram.png). "
                  + CELLS_CAVEAT
                  + (f" Left out (missing cells): {markdown_text(', '.join(ranks['dropped']))}."
                     if ranks["dropped"] else ""), "",
                  _md([[markdown_text(m), f"{r:.2f}"] for m, r in          # best rank first, as on the page
                       ranks["average"].sort_values("avg_rank", kind="stable")[["method", "avg_rank"]].itertuples(
                           index=False)],
                      ["method", "average rank"]), ""]
    else:
        lines += [f"({ranks['friedman'].get('note', 'no data')})", ""]
    wtl = win_tie_loss(df, selection, metric, baseline)
    lines += [f"## Win / tie / loss against {baseline}", "",
              "Per (dataset, proportion) cell; tie: the difference of the means is within the seed std "
              "(the larger of the two rows' sample std; one seed: an exact tie only).", ""]
    lines += [_md([[markdown_text(m), markdown_text(a), *counts] for m, a, *counts in
                   wtl[["method", "against", "win", "tie", "loss", "cells"]].values.tolist()],
                  ["method", "against", "win", "tie", "loss", "cells"]) if not wtl.empty else "(none)", ""]
    rec = recovery_table(df, selection)
    lines += ["## Label recovery", "",
              "Precision and recall (%) of the unknown labels a method recovered as positives, and how many "
              "it recovered, at the selected epoch (else the last recovery epoch), mean over seeds. "
              "Precision is \"none\" where nothing was recovered.", ""]
    lines += [_md([[markdown_text(r["method"]), ratio_label(r["ratio"]), precision_text(r["precision"], r["recovered"]),
                    _num(r["recall"]), recovered_text(r["recovered"]), r["n_seeds"]]
                   for _, r in rec.iterrows()], ["method", "proportion", "precision", "recall", "recovered", "seeds"])
              if not rec.empty else "(no method in these runs recovers labels)", ""]
    cost = cost_table(df, selection, metric)
    lines += ["## Cost", "", f"Mean over runs: train time (s), peak memory (MB), test {metric} (%).", ""]
    lines += [_md([[markdown_text(r["method"]), r["runs"], _num(r["train_seconds"]), _num(r["peak_memory_mb"], 0),
                    _num(r[metric])]
                   for _, r in cost.iterrows()], ["method", "runs", "train s", "peak MB", metric])
              if not cost.empty else "(none)", ""]
    return "\n".join(lines)
