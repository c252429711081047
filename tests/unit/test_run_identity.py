"""Run folders and run ids without training: a record cut by a kill, run ids that change with any
input, the optimizer recipe a profile resolves. Moved here from the engine file, which trains."""
from __future__ import annotations

from benchmark.core.registry import discover
from tests.conftest import smoke_spec

discover()


def test_run_ids_differ_when_anything_differs():
    assert smoke_spec(ratio=0.1).run_id != smoke_spec(ratio=0.2).run_id
    assert smoke_spec(seed=0).run_id != smoke_spec(seed=1).run_id
    assert smoke_spec(method_config=(("loss", "hcp"),)).run_id != smoke_spec().run_id
    assert smoke_spec().run_id == smoke_spec().run_id


def _paper_specs(tmp_path, *methods: str) -> dict:
    """{method: RunSpec} as the command line resolves the paper profile on VOC 2007 (nothing is read)."""
    from benchmark.cli.parser import run_parser
    from benchmark.cli.plan import grid_runs

    weights = tmp_path / "resnet101.pth"
    weights.write_bytes(b"not read: only its existence is checked here")
    args = run_parser().parse_args(["--profile", "paper", "--dataset", "voc2007", "--methods", *methods,
                                     "--ratios", "0.5", "--data-root", str(tmp_path),
                                     "--backbone-weights", str(weights)])
    runs, _, _ = grid_runs(args)
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


def test_paper_profile_uses_the_methods_own_recipe(tmp_path, monkeypatch):
    """The paper profile resolves the HCP recipe (Adam, lr 1e-5, weight decay 5e-4, 20 epochs, lr x0.1
    at epoch 10) for a method without a recipe of its own; CLSL's AdamW + per-iteration OneCycle
    (peak at the profile's lr) replaces it, in the paper profile only."""
    import pytest
    import torch
    from mmengine.optim import StepLR

    from benchmark.contract.method import TaskSpec
    from benchmark.core.registry import get_method

    specs = _paper_specs(tmp_path, "partial_bce", "clsl")
    for spec in specs.values():
        assert (spec.profile, spec.lr, spec.weight_decay, spec.epochs, spec.lr_step) == ("paper", 1e-5, 5e-4, 20, 10)
    task = TaskSpec(num_classes=3, class_names=["a", "b", "c"], num_train=4, feature_dim=16, feature_size=(2, 2),
                    protocol="frozen", label_embeddings=torch.randn(3, 8))

    # partial_bce: the profile's recipe
    pbce = get_method("partial_bce")
    seen = _runner_arguments(pbce(task, pbce.make_config({})), specs["partial_bce"], tmp_path, monkeypatch)
    optimizer = seen["optim_wrapper"].optimizer
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

    # clsl: its own recipe in the paper profile
    cls = get_method("clsl")
    cfg = cls.make_config({"width": 16, "heads": 2, "ffn_dim": 16, "att_dim": 8})
    method = cls(task, cfg)
    seen = _runner_arguments(method, specs["clsl"], tmp_path, monkeypatch)
    optimizer = seen["optim_wrapper"].optimizer
    assert type(optimizer) is torch.optim.AdamW
    assert {(g["lr"], g["weight_decay"], tuple(g["betas"])) for g in optimizer.param_groups} == {(1e-5, 5e-4, (0.9, 0.999))}
    assert seen["train_cfg"]["max_epochs"] == 20
    (one_cycle,) = seen["param_scheduler"]
    assert one_cycle == dict(type="OneCycleLR", eta_max=1e-5, pct_start=cfg.pct_start, anneal_strategy="cos",
                             div_factor=25.0, final_div_factor=1e4, by_epoch=True, begin=0, end=20,
                             convert_to_iter_based=True)

    # ... and the profile's recipe elsewhere (smoke: Adam at the profile's lr, a constant lr)
    cpu = smoke_spec("clsl")
    seen = _runner_arguments(cls(task, cfg), cpu, tmp_path, monkeypatch)
    optimizer = seen["optim_wrapper"].optimizer
    assert type(optimizer) is torch.optim.Adam
    assert {(g["lr"], g["weight_decay"]) for g in optimizer.param_groups} == {(cpu.lr, cpu.weight_decay)}
    assert seen["param_scheduler"] is None and seen["train_cfg"]["max_epochs"] == cpu.epochs


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
