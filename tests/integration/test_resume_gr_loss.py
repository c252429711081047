"""GR Loss through the engine: a smoke run cut after an epoch and resumed from its checkpoint equals
the uninterrupted run under both mask protocols. The method is stateless, so this pins that the
resumed epoch's (w, b, mu, sigma) come from ctx.epoch and ctx.max_epochs (spec wave 3, 3.2 and 3.5)."""
from __future__ import annotations

import math

import pytest


@pytest.mark.parametrize("mask_protocol", ["random", "single_positive"])
def test_gr_loss_resume_matches_uninterrupted_run_and_follows_the_epoch_schedule(mask_protocol, tmp_path):
    from benchmark.core.registry import discover
    from methods.modules import robust
    from tests.conftest import cut_and_resume, records_by_epoch, smoke_spec

    discover()
    spec = smoke_spec("gr_loss", epochs=3, mask_protocol=mask_protocol)
    whole, resumed = cut_and_resume(spec, tmp_path, cut_after=2)
    for kind in ("eval", "train"):
        assert records_by_epoch(resumed, kind) == records_by_epoch(whole, kind)
    assert not records_by_epoch(whole, "recovery")           # recovered_labels() is None
    train = records_by_epoch(whole, "train")
    beta, alpha = (0.0, 2.0, -2.0, -2.0), (0.5, 2.0, 0.8, 0.5)
    for epoch in (1, 2, 3):
        want = robust.kv_schedule(beta, alpha, epoch, 3)
        got = train[epoch]
        assert (got["diag/w"], got["diag/b"], got["diag/mu"], got["diag/sigma"]) == (want.w, want.b, want.mu,
                                                                                        want.sigma)
        assert 0 < got["diag/mean_k_unknown"] < 0.5 and 0 < got["diag/mean_v_unknown"] <= 1
        assert math.isfinite(got["loss_gr"])
    assert train[3]["diag/mu"] == 0.8 and train[3]["diag/w"] == pytest.approx(4 / 3)
