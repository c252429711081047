"""The measurement commands run (at tiny sizes, on the CPU) so that they do not rot; their numbers
are for BENCHMARKS.md and never asserted here."""
from __future__ import annotations

import math

from benchmark.core.registry import discover

discover()


def test_overhead_command_times_engine_and_bare_loop(capsys):
    from benchmark.perf.overhead import main

    assert main(["--method", "hst", "--profile", "smoke", "--epochs", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("hst: engine ") and "evaluation" in lines[0] and "epoch extras" in lines[0]
    assert lines[1].startswith("hst: bare loop ")
    ratio = float(lines[-1].split("overhead ratio: ")[1])
    assert math.isfinite(ratio) and ratio > 0


def test_gpu_command_runs_at_tiny_sizes_on_the_cpu(capsys):
    from benchmark.perf.gpu import main

    assert main(["--methods", "partial_bce", "dsrb", "--backbone", "resnet18", "--image-size", "64",
                 "--batch-size", "2", "--steps", "1", "--workers", "0", "--data-batches", "1"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    rows = [line for line in out if line.startswith("| partial_bce") or line.startswith("| dsrb")]
    assert len(rows) == 4                       # two methods x (fp32, bf16 + channels_last)
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert all(float(c) > 0 for c in cells[3:8]), row


def test_ddp_comparison_reads_both_grids_run_by_run(tmp_path):
    """`perf ddp`'s table: per run the two training times, the largest test-mAP gap over the epochs and
    the ranks' state check, from the run folders of the two grids."""
    import json

    from benchmark.perf.ddp import _runs, compare

    def write(folder, maps, world, differing=None):
        run = folder / "r1"
        run.mkdir(parents=True)
        spec = {"method": "hst", "ratio": 0.5, "seed": 0,
                "parallel": {"world_size": world, "backend": "gloo" if world > 1 else None, "global_batch_size": 32}}
        (run / "spec.json").write_text(json.dumps(spec))
        records = [{"kind": "eval", "epoch": e + 1, "test/mAP": m} for e, m in enumerate(maps)]
        records.append({"kind": "summary", "train_seconds": 4.0 * world})
        if differing:
            records.append({"kind": "rank_check", "epoch": 1, "identical": False, "differing": differing})
        (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in records))

    write(tmp_path / "one", [50.0, 60.0], 1)
    write(tmp_path / "ddp", [50.5, 59.0], 2, differing=["bank.prototypes"])
    rows = compare(_runs(tmp_path / "one"), _runs(tmp_path / "ddp"))
    assert rows[2] == "| hst | 50% | 2 (gloo) | 32 | 4.00 | 8.00 | 1.000 | yes: bank.prototypes |"
