"""reports.stats and the seaborn plots on small frames with known numbers."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from scipy import stats as sps

from reports import plots, stats

GROUP = {"dataset": "synthetic", "protocol": "frozen", "mask_protocol": "random", "profile": "smoke"}
TRUNK = {"hst": "ssgrl", "ssgrl": None, "partial_bce": None, "clsl": None}


def frame(values: dict, selection: str = "val", **extra) -> pd.DataFrame:
    """values: (method, ratio) -> list of mAP per seed."""
    rows = []
    for (method, ratio), per_seed in values.items():
        for seed, value in enumerate(per_seed):
            rows.append({**GROUP, "method": method, "variant": method, "ratio": ratio, "seed": seed,
                         "selection": selection, "mAP": value, "run_id": f"{method}-{ratio}-{seed}",
                         "trunk_baseline": TRUNK.get(method), "train_seconds": 10.0 * (1 + len(method)),
                         "peak_memory_mb": 100.0 + seed, "recovery_precision": math.nan,
                         "recovery_recall": math.nan, **extra})
    return pd.DataFrame(rows)


def test_paired_tests_three_seeds_give_the_scipy_p_value():
    df = frame({("partial_bce", 0.1): [50.0, 52.0, 51.0], ("hst", 0.1): [53.0, 53.5, 55.0]})
    tests = stats.paired_tests(df)
    row = tests[(tests["method"] == "hst") & (tests["ratio"] == 0.1)].iloc[0]
    expected = sps.ttest_rel([53.0, 53.5, 55.0], [50.0, 52.0, 51.0])
    assert row["n"] == 3 and row["test"] == "paired t-test" and row["note"] == ""
    assert row["mean_diff"] == pytest.approx(np.mean([3.0, 1.5, 4.0]))
    assert row["p"] == pytest.approx(expected.pvalue)
    assert "p = " in stats.p_text(row)


def test_fewer_than_three_seeds_say_n_too_small_and_give_no_p():
    df = frame({("partial_bce", 0.1): [50.0, 52.0], ("hst", 0.1): [53.0, 53.5]})
    row = stats.paired_tests(df).iloc[0]
    assert row["n"] == 2 and row["note"] == "n too small" and math.isnan(row["p"])
    assert stats.p_text(row) == "n too small (n = 2)"
    md = stats.statistics_markdown(df)
    # no cell has 3 seeds: one line says so instead of a column of "n too small"
    assert "No paired test: every cell has fewer than 3 seeds (at most 2)" in md
    section = md.split("## Paired differences")[1].split("## Average rank")[0]
    assert "n too small" not in section and "p = " not in section
    assert "not independent datasets" in md


def test_paired_test_column_stays_when_some_cell_has_three_seeds():
    df = frame({("partial_bce", 0.1): [50.0, 52.0, 51.0], ("hst", 0.1): [53.0, 53.5, 55.0],
                ("partial_bce", 0.5): [60.0, 61.0], ("hst", 0.5): [63.0, 60.0]})
    tests = stats.paired_tests(df)
    assert stats.seeds_too_few(tests) == ""
    md = stats.statistics_markdown(df)
    assert "n too small (n = 2)" in md and "paired t-test, n = 3" in md


def test_trunk_baseline_comparison_only_when_its_rows_exist():
    base = {("partial_bce", 0.1): [50.0, 51.0, 52.0], ("hst", 0.1): [55.0, 56.0, 58.0]}
    tests = stats.paired_tests(frame(base))
    assert set(zip(tests["method"], tests["against"], tests["kind"])) == {("hst", "partial_bce", "baseline")}
    tests = stats.paired_tests(frame({**base, ("ssgrl", 0.1): [54.0, 56.0, 57.0]}))
    pairs = set(zip(tests["method"], tests["against"], tests["kind"]))
    assert pairs == {("hst", "partial_bce", "baseline"), ("hst", "ssgrl", "trunk"), ("ssgrl", "partial_bce", "baseline")}
    trunk = tests[tests["kind"] == "trunk"].iloc[0]
    assert trunk["mean_diff"] == pytest.approx(np.mean([1.0, 0.0, 1.0]))


def test_avg_rows_pair_per_seed_means_over_proportions():
    df = frame({("partial_bce", 0.1): [50.0, 50.0, 50.0], ("partial_bce", 0.5): [60.0, 60.0, 60.0],
                ("hst", 0.1): [51.0, 52.0, 53.0], ("hst", 0.5): [61.0, 60.0, 63.0]})
    avg = stats.paired_tests(df).set_index("ratio").loc["avg"]
    assert avg["mean_diff"] == pytest.approx(np.mean([1.0, 1.0, 3.0]))


def test_ranks_friedman_and_critical_difference():
    values = {}
    for i, ratio in enumerate((0.1, 0.3, 0.5, 0.7, 0.9)):
        values[("partial_bce", ratio)] = [50.0 + i]
        values[("hst", ratio)] = [55.0 + i]
        values[("clsl", ratio)] = [53.0 + i if i % 2 else 56.0 + i]
    result = stats.rank_summary(frame(values), method_order=["partial_bce", "hst", "clsl"])
    ranks = result["average"].set_index("method")["avg_rank"]
    assert ranks["partial_bce"] == 3.0 and ranks["hst"] == pytest.approx((2 + 1 + 2 + 1 + 2) / 5)
    assert result["k"] == 3 and result["n_cells"] == 5
    expected = sps.friedmanchisquare([50, 51, 52, 53, 54], [55, 56, 57, 58, 59], [56, 54, 58, 56, 60])
    assert result["friedman"]["p"] == pytest.approx(expected.pvalue)
    assert result["cd"] == pytest.approx(2.343 * math.sqrt(3 * 4 / (6 * 5)))
    groups = stats.cliques(result["average"], result["cd"])
    assert groups == [["clsl", "hst"], ["hst", "partial_bce"]]        # 1.4, 1.6, 3.0 with CD 1.48
    assert stats.cliques(result["average"], 0.1) == []


def test_two_methods_have_ranks_but_no_friedman():
    result = stats.rank_summary(frame({("partial_bce", 0.1): [50.0], ("hst", 0.1): [55.0]}))
    assert result["k"] == 2 and "note" in result["friedman"] and math.isfinite(result["cd"])


def test_win_tie_loss_uses_the_seed_std():
    df = frame({("partial_bce", 0.1): [50.0, 54.0], ("hst", 0.1): [53.0, 55.0],     # +2 within std 2.8: tie
                ("partial_bce", 0.5): [60.0, 60.2], ("hst", 0.5): [65.0, 65.2],     # +5: win
                ("partial_bce", 0.9): [70.0, 70.2], ("hst", 0.9): [60.0, 60.2]})    # -10: loss
    table = stats.win_tie_loss(df).set_index("method")
    assert table.loc["hst", ["win", "tie", "loss", "cells"]].tolist() == [1, 1, 1, 3]


def test_recovery_and_cost_tables():
    df = frame({("partial_bce", 0.1): [50.0, 52.0], ("hst", 0.1): [53.0, 55.0]})
    df.loc[df["method"] == "hst", "recovery_precision"] = [80.0, 90.0]
    df.loc[df["method"] == "hst", "recovery_recall"] = [10.0, 20.0]
    rec = stats.recovery_table(df)
    assert rec[["method", "precision", "recall", "n_seeds"]].values.tolist() == [["hst", 85.0, 15.0, 2]]
    assert math.isnan(rec["recovered"].iloc[0])          # an older metrics.jsonl without the count
    cost = stats.cost_table(df).set_index("method")
    assert cost.loc["hst", "train_seconds"] == 40.0 and cost.loc["hst", "mAP"] == 54.0
    assert cost.loc["partial_bce", "peak_memory_mb"] == 100.5 and cost.loc["partial_bce", "runs"] == 2


def test_recovery_of_nothing_has_no_precision_and_says_none():
    """Recovering no label is "none (0 recovered)", not a precision of 0 beside a 100 from one lucky label."""
    df = frame({("hst", 0.1): [53.0, 55.0], ("hst", 0.5): [60.0, 61.0]})
    hst = df["method"] == "hst"
    df.loc[hst, "recovery_precision"] = [math.nan, math.nan, 100.0, 50.0]
    df.loc[hst, "recovery_recall"] = [0.0, 0.0, 1.0, 2.0]
    df.loc[hst, "recovery_count"] = [0.0, 0.0, 1.0, 6.0]
    rec = stats.recovery_table(df).set_index("ratio")
    assert math.isnan(rec.loc[0.1, "precision"]) and rec.loc[0.1, "recovered"] == 0.0
    assert rec.loc[0.5, "precision"] == 75.0 and rec.loc[0.5, "recovered"] == 3.5
    assert stats.precision_text(rec.loc[0.1, "precision"], 0.0) == "none (0 recovered)"
    assert stats.precision_text(75.0, 3.5) == "75.0" and stats.recovered_text(3.5) == "3.5"
    assert "| none (0 recovered) |" in stats.statistics_markdown(df)
    fig, drawn = plots.fig_recovery(stats.recovery_table(df))
    labels = [t.get_text() for t in fig.axes[0].texts]
    assert "none" in labels and "n=3.5" in labels


def test_plot_functions_return_their_figure_and_frame():
    df = frame({("partial_bce", 0.1): [50.0, 52.0, 51.0], ("hst", 0.1): [53.0, 53.5, 55.0],
                ("partial_bce", 0.5): [60.0, 61.0, 62.0], ("hst", 0.5): [63.0, 60.0, 65.0]})
    df.loc[df["method"] == "hst", "recovery_precision"] = 70.0
    df.loc[df["method"] == "hst", "recovery_recall"] = 30.0
    fig, drawn = plots.fig_map_vs_ratio(df)
    assert isinstance(fig, Figure) and len(drawn) == 12
    assert drawn.groupby(["variant", "ratio"])["mAP"].mean()[("hst", 0.5)] == pytest.approx(62.667, abs=1e-3)
    tests = stats.paired_tests(df)
    fig, drawn = plots.fig_difference_heatmap(tests)
    assert set(drawn["column"]) == {"10%", "50%", "Avg."}
    assert drawn.set_index(["method", "column"]).loc[("hst", "10%"), "mean_diff"] == pytest.approx(8.5 / 3)
    ranks = stats.rank_summary(df)
    fig, drawn = plots.fig_cd_diagram(ranks["average"], ranks["cd"], stats.cliques(ranks["average"], ranks["cd"]),
                                      ranks["n_cells"])
    assert drawn.set_index("method")["avg_rank"].to_dict() == {"hst": 1.0, "partial_bce": 2.0}
    fig, drawn = plots.fig_cost(stats.cost_table(df))
    assert set(drawn["method"]) == {"hst", "partial_bce"}
    fig, drawn = plots.fig_recovery(stats.recovery_table(df))
    assert drawn["precision"].tolist() == [70.0, 70.0]
    with pytest.raises(ValueError):
        plots.fig_recovery(stats.recovery_table(df.assign(recovery_precision=math.nan, recovery_recall=math.nan)))


def test_save_png_is_atomic_and_a_png(tmp_path):
    fig, _ = plots.fig_map_vs_ratio(frame({("partial_bce", 0.1): [50.0]}))
    path = plots.save_png(fig, tmp_path / "x.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
