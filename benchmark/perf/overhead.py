"""``python -m benchmark.perf overhead --method M [--profile P] [--ratio R] [--threads T]``

Trains one run twice on the same cached data: through the engine (MMEngine runner, hooks,
per-epoch evaluation, checkpoints), and through a bare loop of ``on_train_epoch_start``,
``compute_losses``, backward, optimizer step and ``on_train_epoch_end``. Prints both times with
evaluation and epoch extras broken out, and last ``overhead ratio: R`` (engine over bare loop).
Data preparation (dataset, mask, cached features) is shared and not timed.
"""
from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch


@contextlib.contextmanager
def _timed_methods(totals: dict, targets: list[tuple[object, str, str]]):
    """Wrap ``owner.attr`` so that its wall time adds up in ``totals[key]``; restored afterwards."""
    saved = []
    for owner, attr, key in targets:
        original = getattr(owner, attr)

        def wrapper(*args, _original=original, _key=key, **kwargs):
            start = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                totals[_key] += time.perf_counter() - start

        saved.append((owner, attr, original))
        setattr(owner, attr, wrapper)
    try:
        yield totals
    finally:
        for owner, attr, original in saved:
            setattr(owner, attr, original)


def run_spec(method: str, profile: str, ratio: float, epochs: int | None):
    from benchmark.config.profiles import get_profile
    from benchmark.config.run_spec import profile_spec

    return profile_spec(method, profile, ratio, train={"epochs": epochs or get_profile(profile).train.epochs},
                        embeddings="glove")


def engine_time(spec, out: Path) -> dict:
    """Wall times of one engine run: total ``runner.train()``, evaluation, epoch extras, checkpoints."""
    from mmengine.runner import Runner
    from mmengine.runner.loops import ValLoop

    from benchmark.core.registry import get_method
    from benchmark.engine.lifecycle import run_one
    from benchmark.engine.runner import MethodHook

    cls = get_method(spec.method)
    totals: dict = defaultdict(float)
    targets = [(Runner, "train", "total"), (ValLoop, "run", "evaluation"), (MethodHook, "_checkpoint", "checkpoints"),
               (cls, "on_train_epoch_start", "epoch extras"), (cls, "on_train_epoch_end", "epoch extras")]
    with _timed_methods(totals, targets):
        run_one(spec, out, say=lambda line: None)
    return dict(totals)


def bare_time(spec) -> dict:
    """The same training through a plain loop (same data, seeds, optimizer, schedule)."""
    from benchmark.contract.method import Batch, TrainContext
    from benchmark.core.registry import get_method
    from benchmark.engine.prepared_run import PreparedRun, pick_device
    from benchmark.engine.runner import build_optim_wrapper
    from benchmark.engine.sampling import iterate_train, loaders
    from benchmark.engine.seeding import seed_everything

    cls = get_method(spec.method)
    device = pick_device()
    prep = PreparedRun(spec, device)
    cfg = cls.make_config(dict(spec.method_config), profile=spec.profile)
    task = prep.task_spec(cls.card.requires)
    seed_everything(spec.seed)
    method = cls(task, cfg, backbone=prep.backbone).to(device)
    train_loader, _ = loaders(prep, spec, 0)
    ctx = TrainContext(max_epochs=spec.epochs, iters_per_epoch=len(train_loader), seed=spec.seed, profile=spec.profile,
                       device=device, iterate_train=iterate_train(prep.train_set(augmented=False), device))
    method.ctx = ctx
    optimizer = build_optim_wrapper(method, spec, device).optimizer
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, spec.train.step_size, spec.train.gamma) if spec.train.schedule == "step" else None
    totals: dict = defaultdict(float)
    start = time.perf_counter()
    for epoch in range(spec.epochs):
        ctx.epoch = epoch
        seed_everything(spec.seed * 1000 + epoch)
        train_loader.sampler.set_epoch(epoch)
        tick = time.perf_counter()
        method.on_train_epoch_start(ctx)
        totals["epoch extras"] += time.perf_counter() - tick
        method.train()
        for i, data in enumerate(train_loader):
            ctx.iter_in_epoch = i
            batch = Batch(**{k: v.to(device) for k, v in data.items()})
            loss = sum(method.compute_losses(batch, ctx).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        tick = time.perf_counter()
        method.on_train_epoch_end(ctx)
        totals["epoch extras"] += time.perf_counter() - tick
        if scheduler is not None:
            scheduler.step()
    totals["total"] = time.perf_counter() - start
    return dict(totals)


def measure(method: str, profile: str = "default", ratio: float = 0.5, epochs: int | None = None,
            threads: int = 1) -> dict:
    from benchmark.engine.prepared_run import warm_shared_caches

    torch.set_num_threads(threads)
    spec = run_spec(method, profile, ratio, epochs)
    warm_shared_caches(spec)
    import sklearn.cluster  # noqa: F401  - one-time import cost, paid by whichever run came first
    bare_time(run_spec(method, profile, ratio, 1))          # warm-up: loads the cached maps, first kernels
    bare = bare_time(spec)
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_time(spec, Path(tmp))
    return {"engine": engine, "bare": bare, "ratio": engine["total"] / bare["total"]}


def report(method: str, result: dict) -> str:
    engine, bare = result["engine"], result["bare"]
    other = engine["total"] - engine.get("evaluation", 0) - engine.get("epoch extras", 0) - engine.get("checkpoints", 0)
    return "\n".join([
        f"{method}: engine {engine['total']:.2f} s (training steps and hooks {other:.2f} s, evaluation "
        f"{engine.get('evaluation', 0):.2f} s, epoch extras {engine.get('epoch extras', 0):.2f} s, checkpoints "
        f"{engine.get('checkpoints', 0):.2f} s)",
        f"{method}: bare loop {bare['total']:.2f} s (training steps {bare['total'] - bare.get('epoch extras', 0):.2f} s, "
        f"epoch extras {bare.get('epoch extras', 0):.2f} s)",
        f"overhead ratio: {result['ratio']:.3f}",
    ])


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf overhead", description=__doc__.split("\n\n")[1])
    p.add_argument("--method", required=True)
    p.add_argument("--profile", default="default")
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--epochs", type=int)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a parallel grid's default is 1)")
    args = p.parse_args(argv)
    from benchmark.core.quiet import quiet_libraries
    from benchmark.core.registry import discover
    from benchmark.engine.allocator import tune_allocator

    tune_allocator()
    quiet_libraries()
    discover()
    print(report(args.method, measure(args.method, args.profile, args.ratio, args.epochs, args.threads)))
    return 0
