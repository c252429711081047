"""Run folders and run ids without training: a record cut by a kill, run ids that change with any
input, the optimizer recipe a profile resolves. Moved here from the engine file, which trains."""
from __future__ import annotations

import numpy as np
import pytest

from benchmark.core.registry import discover
from tests.conftest import smoke_spec

discover()


def test_run_ids_differ_when_anything_differs():
    assert smoke_spec(ratio=0.1).run_id != smoke_spec(ratio=0.2).run_id
    assert smoke_spec(seed=0).run_id != smoke_spec(seed=1).run_id
    assert smoke_spec(method_config=(("loss", "hcp"),)).run_id != smoke_spec().run_id
    assert smoke_spec().run_id == smoke_spec().run_id


def _grid(tmp_path, *argv: str) -> list:
    """The RunSpecs the command line resolves (nothing is read or trained)."""
    from benchmark.cli.parser import run_parser
    from benchmark.cli.plan import grid_runs

    return grid_runs(run_parser().parse_args(list(argv)))[0]


def _paper_specs(tmp_path, *methods: str, extra=()) -> dict:
    """{method: RunSpec} as the command line resolves the paper profile on VOC 2007 (nothing is read)."""
    weights = tmp_path / "resnet101.pth"
    weights.write_bytes(b"not read: only its existence is checked here")
    runs = _grid(tmp_path, "--profile", "paper", "--dataset", "voc2007", "--methods", *methods, "--ratios", "0.5",
                 "--data-root", str(tmp_path), "--backbone-weights", str(weights), "--embeddings", "glove", *extra)
    return {r.method: r for r in runs}


def _runner_arguments(method, spec, tmp_path, monkeypatch) -> dict:
    """What the engine hands MMEngine's Runner for ``method`` under ``spec`` (no Runner is built)."""
    from types import SimpleNamespace

    import pytest
    import torch

    import benchmark.engine.runner as engine_runner
    from benchmark.core.run_folder import RunFolder

    class Built(Exception):
        pass

    seen: dict = {}

    def runner(**kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(engine_runner, "Runner", runner)
    loader = SimpleNamespace(dataset=SimpleNamespace(reference=lambda: None))
    with pytest.raises(Built):
        engine_runner.build_runner(method, spec, RunFolder(tmp_path, spec.run_id), loader, loader, None,
                                   torch.device("cpu"), False)
    return seen


def test_paper_profile_trains_each_method_on_its_own_recipe(tmp_path, monkeypatch):
    """partial_bce (no official code) inherits the HCP script recipe: Adam, lr 1e-5, weight decay 5e-4,
    20 epochs, lr x0.1 at epoch 10, batch 8, fp32. CLSL trains on its README's VOC recipe: AdamW
    (0.9, 0.999), lr 9e-5, weight decay 1e-4, per-iteration OneCycle (pct_start 0.2) over 60 epochs,
    batch 64. The CPU profiles keep the suite's recipe."""
    import torch
    from mmengine.optim import AmpOptimWrapper, StepLR
    from mmengine.optim.scheduler import OneCycleLR

    from benchmark.contract.method import TaskSpec
    from benchmark.core.registry import get_method

    specs = _paper_specs(tmp_path, "partial_bce", "clsl")
    pbce_spec, clsl_spec = specs["partial_bce"], specs["clsl"]
    assert pbce_spec.protocol == clsl_spec.protocol == "finetune"        # the paper profile's protocol
    assert (pbce_spec.lr, pbce_spec.weight_decay, pbce_spec.epochs, pbce_spec.batch_size, pbce_spec.precision) == \
        (1e-5, 5e-4, 20, 8, "fp32")
    assert (clsl_spec.lr, clsl_spec.weight_decay, clsl_spec.epochs, clsl_spec.batch_size) == (9e-5, 1e-4, 60, 64)
    assert dict(clsl_spec.method_config)["ema_decay"] == 0.9983           # README.md:56 --ema-decay
    task = TaskSpec(num_classes=3, class_names=["a", "b", "c"], num_train=4, feature_dim=16, feature_size=(2, 2),
                    protocol="frozen", label_embeddings=torch.randn(3, 8))

    pbce = get_method("partial_bce")
    seen = _runner_arguments(pbce(task, pbce.make_config({})), pbce_spec, tmp_path, monkeypatch)
    wrapper = seen["optim_wrapper"]
    assert not isinstance(wrapper, AmpOptimWrapper)                       # fp32: never autocast
    optimizer = wrapper.optimizer
    assert type(optimizer) is torch.optim.Adam
    assert {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups} == {(1e-5, 5e-4)}
    assert seen["train_cfg"]["max_epochs"] == 20
    assert seen["param_scheduler"] == [dict(type="StepLR", step_size=10, gamma=0.1, by_epoch=True)]
    schedule = StepLR(optimizer, step_size=10, gamma=0.1, by_epoch=True)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()                    # no gradients: changes nothing, keeps the call order
        schedule.step()
    assert lrs == pytest.approx([1e-5] * 10 + [1e-6] * 10, rel=1e-9)

    cls = get_method("clsl")
    cfg = cls.make_config({"width": 16, "heads": 2, "ffn_dim": 16, "att_dim": 8})
    seen = _runner_arguments(cls(task, cfg), clsl_spec, tmp_path, monkeypatch)
    optimizer = seen["optim_wrapper"].optimizer
    assert type(optimizer) is torch.optim.AdamW
    assert {(g["lr"], g["weight_decay"], tuple(g["betas"])) for g in optimizer.param_groups} == \
        {(9e-5, 1e-4, (0.9, 0.999))}
    (one_cycle,) = seen["param_scheduler"]
    assert one_cycle == dict(type="OneCycleLR", eta_max=9e-5, pct_start=0.2, anneal_strategy="cos", div_factor=25.0,
                             final_div_factor=1e4, by_epoch=True, begin=0, end=60, convert_to_iter_based=True)
    config = {k: v for k, v in one_cycle.items() if k not in ("type", "convert_to_iter_based")}
    scheduler = OneCycleLR.build_iter_from_epoch(optimizer, epoch_length=1, **config)
    lrs = []
    for _ in range(60):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(9e-5 / 25) and int(np.argmax(lrs)) == 11 and max(lrs) == pytest.approx(9e-5)
    assert lrs[-1] == pytest.approx(9e-5 / 25 / 1e4, rel=0.05)

    cpu = smoke_spec("clsl")                # the suite's recipe: Adam at the profile's lr, a constant lr
    seen = _runner_arguments(cls(task, cfg), cpu, tmp_path, monkeypatch)
    optimizer = seen["optim_wrapper"].optimizer
    assert type(optimizer) is torch.optim.Adam
    assert {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups} == {(cpu.lr, cpu.weight_decay)}
    assert seen["param_scheduler"] is None and seen["train_cfg"]["max_epochs"] == cpu.epochs


def test_flags_override_the_recipe_and_are_recorded(tmp_path):
    base = _paper_specs(tmp_path, "hst")["hst"]
    changed = _paper_specs(tmp_path, "hst", extra=("--lr", "3e-5", "--batch-size", "16", "--precision", "bf16"))["hst"]
    assert (base.lr, base.batch_size, base.precision, base.recipe_overrides) == (1e-5, 32, "fp32", ())
    assert (changed.lr, changed.batch_size, changed.precision) == (3e-5, 16, "bf16")
    assert changed.recipe_overrides == ("batch_size", "lr", "precision")
    assert changed.run_id != base.run_id


def test_the_run_id_changes_with_precision_device_threads_and_any_recipe_value():
    base = smoke_spec()
    for changed in (smoke_spec(train={"precision": "bf16"}), smoke_spec(threads=1), smoke_spec(threads=2),
                    smoke_spec(device="cuda"), smoke_spec(train={"grad_clip": 1.0}), smoke_spec(train={"betas": (0.9, 0.99)}),
                    smoke_spec(train={"schedule": "step", "step_size": 1})):
        assert changed.run_id != base.run_id
        if changed.threads or changed.device != "cpu":        # execution only: one configuration for reports
            assert changed.numbers_identity() == base.numbers_identity()
        else:
            assert changed.numbers_identity() != base.numbers_identity()
    assert smoke_spec(recipe_overrides=("lr",)).run_id == base.run_id       # recorded, not hashed


@pytest.mark.parametrize("a, b", [("glove", "GLOVE"), ("glove", " glove"), ("random", "random:300")])
def test_equal_embedding_spellings_are_one_run(tmp_path, a, b):
    first = _grid(tmp_path, "--profile", "smoke", "--methods", "hst", "--ratios", "0.5", "--embeddings", a)
    second = _grid(tmp_path, "--profile", "smoke", "--methods", "hst", "--ratios", "0.5", "--embeddings", b)
    assert first[0].run_id == second[0].run_id


def test_a_set_value_equal_to_the_default_is_the_same_run(tmp_path):
    plain = _grid(tmp_path, "--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5")
    same = _grid(tmp_path, "--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--set", "gamma=1.0")
    other = _grid(tmp_path, "--profile", "smoke", "--methods", "partial_bce", "--ratios", "0.5", "--set", "gamma=2")
    assert plain[0].run_id == same[0].run_id != other[0].run_id
    assert same[0].method_config == () and other[0].method_config == (("gamma", 2.0),)


def test_a_file_named_in_set_enters_the_identity_by_content(tmp_path):
    from benchmark.cli.preflight import check_grid

    def run_with(path):
        runs = _grid(tmp_path, "--profile", "smoke", "--methods", "csl", "--ratios", "0.5", "--set", f"prior=file:{path}")
        return check_grid(runs, tmp_path / "out")[0]

    one, two = tmp_path / "a" / "prior.csv", tmp_path / "b" / "copy.csv"
    for path in (one, two):
        path.parent.mkdir()
        path.write_text("0.5\n" * 6)
    first, moved = run_with(one), run_with(two)
    assert first.run_id == moved.run_id                   # one content at two paths: one run
    assert first.identity()["method_config"]["prior"] == "<fingerprinted>"
    two.write_text("0.25\n" * 6)
    assert run_with(two).run_id != first.run_id           # edited: another run


def test_paper_profile_refuses_frozen_heads_and_the_synthetic_dataset(tmp_path):
    from benchmark.core.errors import UserError

    weights = tmp_path / "w.pth"
    weights.write_bytes(b"x")
    with pytest.raises(UserError, match="--profile paper trains the whole network"):
        _grid(tmp_path, "--profile", "paper", "--protocol", "frozen", "--dataset", "voc2007", "--data-root",
              str(tmp_path), "--backbone-weights", str(weights), "--methods", "hst", "--embeddings", "glove")
    with pytest.raises(UserError, match="synthetic dataset runs under --profile smoke or default"):
        _grid(tmp_path, "--profile", "paper", "--backbone-weights", str(weights), "--methods", "hst")
    with pytest.raises(UserError, match="official 300-d label vectors.*--embeddings file:PATH.npy"):
        _grid(tmp_path, "--profile", "paper", "--dataset", "voc2007", "--data-root", str(tmp_path),
              "--backbone-weights", str(weights), "--methods", "hst")


def test_line_cut_by_a_kill_does_not_swallow_the_next_record(tmp_path):
    """A SIGKILL mid-write leaves a line without its newline; the resumed run's record must survive."""
    from benchmark.core.run_folder import RunFolder

    folder = RunFolder(tmp_path, "run")
    folder.path.mkdir()
    folder.log({"kind": "eval", "epoch": 1, "test/mAP": 50.0})
    with open(folder.path / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "kind": "eval", "test/mA')           # cut here
    folder.log({"kind": "eval", "epoch": 2, "test/mAP": 61.0})
    assert [(r["epoch"], r["test/mAP"]) for r in folder.records("eval")] == [(1, 50.0), (2, 61.0)]


def test_proportion_free_protocols_agree_with_the_mask_generators_and_clsl_keeps_its_ratios():
    """random_clsl is the random protocol drawn with torch: a grid trains it at every proportion
    (before, plan and expand_grid collapsed every protocol but random to p = 1.0)."""
    from benchmark.cli.plan import mask_ratios
    from benchmark.config.run_spec import NO_PROPORTION, expand_grid
    from datasets.masks import PROTOCOLS

    assert set(NO_PROPORTION) == {name for name, proto in PROTOCOLS.items() if not proto.uses_p}
    assert mask_ratios("random_clsl", [0.1, 0.5]) == [0.1, 0.5] and mask_ratios("single_positive", [0.1]) == [1.0]
    train = smoke_spec().train
    runs = expand_grid(["partial_bce"], ["synthetic"], [0.1, 0.5], [0], mask_protocol="random_clsl", train=train)
    assert [r.ratio for r in runs] == [0.1, 0.5]
    assert "random_clsl-p0.1" in runs[0].run_id and "10% (random_clsl)" in runs[0].describe()
    single = expand_grid(["partial_bce"], ["synthetic"], [0.1, 0.5], [0], mask_protocol="single_positive", train=train)
    assert [r.ratio for r in single] == [1.0] and "__single_positive__" in single[0].run_id
