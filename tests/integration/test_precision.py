"""Precision is a recipe choice: fp32 never autocasts, bf16 trains under autocast (also on a CPU), and
the ASL loss, whose official code gives NaN on fp16 logits, stays finite in the suite."""
from __future__ import annotations

import math

import pytest
import torch

from benchmark.engine.lifecycle import run_one
from tests.conftest import smoke_spec


def _wrapper(spec):
    from benchmark.contract.method import TaskSpec
    from benchmark.core.registry import discover, get_method
    from benchmark.engine.runner import build_optim_wrapper

    discover()
    cls = get_method(spec.method)
    task = TaskSpec(num_classes=3, class_names=["a", "b", "c"], num_train=4, feature_dim=16, feature_size=(2, 2),
                    protocol="frozen")
    method = cls(task, cls.make_config({}, profile="smoke"))
    return method, build_optim_wrapper(method, spec, torch.device("cpu"))


def test_fp32_never_autocasts_and_bf16_does():
    from benchmark.engine.runner import AutocastOptimWrapper

    method, fp32 = _wrapper(smoke_spec())
    assert type(fp32).__name__ == "OptimWrapper"
    with fp32.optim_context(method):
        assert not torch.is_autocast_enabled("cpu")
        assert method.predict_scores(torch.randn(2, 16, 2, 2)).dtype == torch.float32
    method, bf16 = _wrapper(smoke_spec(train={"precision": "bf16"}))
    assert isinstance(bf16, AutocastOptimWrapper)
    with bf16.optim_context(method):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        assert method.predict_scores(torch.randn(2, 16, 2, 2)).dtype == torch.bfloat16


def test_fp16_is_refused_on_a_cpu():
    from benchmark.core.errors import UserError

    with pytest.raises(UserError, match="fp16 needs a GPU"):
        _wrapper(smoke_spec(train={"precision": "fp16"}))


def test_a_bf16_run_trains_on_the_cpu_and_differs_from_fp32(tmp_path, trained):
    fp32 = trained(smoke_spec("partial_bce"))
    bf16 = run_one(smoke_spec("partial_bce", train={"precision": "bf16"}), tmp_path, say=lambda line: None)
    assert bf16.done
    assert bf16.spec_record()["train"]["precision"] == "bf16" and fp32.spec_record()["train"]["precision"] == "fp32"
    losses = [r["loss"] for r in bf16.records("train")]
    assert losses and all(math.isfinite(v) for v in losses)
    assert [r["loss"] for r in fp32.records("train")] != losses          # the precision changed the computation
    assert all(math.isfinite(r["test/mAP"]) for r in bf16.records("eval"))


def test_asl_stays_finite_where_the_official_loss_gives_nan_on_fp16_logits():
    """The official ASL clamps p at eps = 1e-8, which is 0 in fp16, so log(0) * 0 = NaN on saturated
    fp16 logits (reported upstream); the suite's ASL computes its loss on fp32 logits."""
    from benchmark.contract.method import Batch, TaskSpec
    from benchmark.core.registry import discover, get_method
    from methods.modules.asl import asl_per_entry

    logits = torch.tensor([[30.0, -30.0]], dtype=torch.float16)
    targets = torch.tensor([[1.0, 0.0]])
    assert not torch.isfinite(asl_per_entry(logits, targets, 0.0, 4.0, 0.0, 1e-8)).all()    # fp16 arithmetic
    assert torch.isfinite(asl_per_entry(logits.float(), targets, 0.0, 4.0, 0.0, 1e-8)).all()

    discover()
    cls = get_method("asl")
    task = TaskSpec(num_classes=2, class_names=["a", "b"], num_train=1, feature_dim=4, feature_size=(1, 1),
                    protocol="frozen")
    method = cls(task, cls.make_config({"eps": 1e-8}))
    method.predict_scores = lambda inputs: logits                      # saturated fp16 logits from the head
    loss = method.compute_losses(Batch(torch.zeros(1, 4, 1, 1), targets, torch.ones(1, 2, dtype=torch.bool),
                                       torch.arange(1)), None)
    assert all(torch.isfinite(v) for v in loss.values())
