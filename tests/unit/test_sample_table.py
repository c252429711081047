"""SampleTable: the harness-owned per-sample table (writes by batch index, checkpointed, old keys read)."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from benchmark.contract.sample_table import SampleTable
from methods.modules.recovered import RecoveredLabels

METHODS_DIR = Path(__file__).resolve().parents[2] / "methods"


def test_write_combine_and_clear():
    table = SampleTable(5, 3)
    table.write(torch.tensor([1, 3]), torch.tensor([[True, False, False], [False, False, True]]))
    table.write(torch.tensor([1]), torch.tensor([[False, True, False]]), torch.logical_or)
    assert table.rows.nonzero().tolist() == [[1, 0], [1, 1], [3, 2]]
    table.write(torch.tensor([3]), torch.tensor([[False, True, False]]))            # plain write replaces
    assert table[3].tolist() == [False, True, False]
    seen = SampleTable(5)
    seen.write(torch.tensor([0, 4]), True)
    assert seen.rows.tolist() == [True, False, False, False, True]
    table.clear()
    assert not table.rows.any()


def test_tables_are_in_the_state_dict_and_a_checkpoint_of_the_buffer_layout_loads():
    from benchmark.contract.method import Method

    class Owner(Method):
        name = "owner"

        def __init__(self):
            super().__init__(task=None)
            self.corrected = SampleTable(4, 2)
            self.recovered = RecoveredLabels(4, 2)

    keys = [k for k in Owner().state_dict() if k.endswith(".rows")]
    assert keys == ["corrected.rows", "recovered.intra.rows", "recovered.inter.rows", "recovered.seen.rows"]
    old = {"corrected": torch.rand(4, 2) > 0.5, "recovered_intra": torch.rand(4, 2) > 0.5,
           "recovered_inter": torch.rand(4, 2) > 0.5, "recovered_seen": torch.tensor([True, False, True, False])}
    wrapper = nn.ModuleDict({"method": Owner()})               # the engine's wrapper prefixes "method."
    wrapper.load_state_dict({f"method.{k}": v for k, v in old.items()}, strict=True)
    fresh = wrapper["method"]
    assert torch.equal(fresh.corrected.rows, old["corrected"])
    assert torch.equal(fresh.recovered.intra.rows, old["recovered_intra"])
    assert torch.equal(fresh.recovered.seen.rows, old["recovered_seen"])


def test_recovered_labels_counts_and_sources():
    rec = RecoveredLabels(4, 3)
    assert rec.labels("union") is None
    rec.record(torch.tensor([0, 2]), intra=torch.tensor([[True, False, False], [False, False, False]]))
    rec.record(torch.tensor([0, 2]), inter=torch.tensor([[True, True, False], [False, False, True]]))
    assert rec.counts() == {"pseudo_intra": 1.0, "pseudo_inter": 3.0, "pseudo_union": 3.0}
    index, union = rec.labels("union")
    assert index.tolist() == [0, 2] and union.sum() == 3
    assert rec.labels("intra")[1].sum() == 1
    rec.clear()
    assert rec.labels("inter") is None


def test_no_method_writes_rows_through_the_collectives_by_hand():
    offenders = [str(p.relative_to(METHODS_DIR)) for p in METHODS_DIR.rglob("*.py") if "set_rows" in p.read_text()]
    assert not offenders, f"use benchmark.contract.sample_table.SampleTable in {offenders}"
