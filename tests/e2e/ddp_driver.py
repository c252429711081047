"""Run by tests/e2e/test_ddp.py under ``torchrun --nproc-per-node 2`` (gloo, CPU):

``helpers``  every ``benchmark.contract.collectives`` helper at two ranks against the same computation in one
             process on the whole batch (values and, with DDP's gradient average emulated, gradients);
``resume OUT METHOD...``  each method's smoke run whole, and cut after epoch 1 on every rank then
             resumed from rank 0's checkpoint: the records must be identical.

Exits non-zero (an AssertionError on some rank) when a check fails.
"""
from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from benchmark.contract import collectives
from benchmark.core import process_group
from benchmark.engine import ddp_model  # noqa: E402


@contextlib.contextmanager
def one_process():
    """The helpers as a single process sees them, for the references computed on the whole batch."""
    names, single = ("is_distributed", "rank", "world_size"), ((lambda: False), (lambda: 0), (lambda: 1))
    modules = (process_group, collectives)            # collectives holds its own references to the three
    real = [[getattr(module, name) for name in names] for module in modules]
    for module in modules:
        for name, value in zip(names, single):
            setattr(module, name, value)
    try:
        yield
    finally:
        for module, values in zip(modules, real):
            for name, value in zip(names, values):
                setattr(module, name, value)


def ddp_grads(params) -> list:
    """What DDP does after backward: the ranks' gradients averaged."""
    return [collectives.all_reduce(p.grad, op="mean") for p in params]


def close(a, b, what: str, tol: float = 1e-5) -> None:
    assert torch.allclose(a, b, atol=tol, rtol=1e-4), f"{what}: rank {process_group.rank()} {a} != {b}"


def check_helpers() -> None:
    from methods.modules.contrastive import instance_contrastive_loss
    from methods.modules.large_loss import large_loss
    from methods.modules.losses import masked_bce
    from methods.modules.spml import expected_positive_reg

    r, world = process_group.rank(), process_group.world_size()
    gen = torch.Generator().manual_seed(0)
    b, c, d = 8, 5, 6
    x = torch.randn(b, d, generator=gen)                      # the global batch, known to every rank
    targets = (torch.rand(b, c, generator=gen) > 0.5).float()
    observed = torch.rand(b, c, generator=gen) > 0.4
    targets = targets * observed
    mine = slice(r, None, world)                               # the sampler deals rows round robin

    # gathers and shards
    assert torch.equal(collectives.gather_batch(x[mine]), x), "gather_batch must restore the global order"
    share = collectives.shard(7)
    assert torch.equal(collectives.gather_rows(torch.arange(7)[share.start:share.stop]), torch.arange(7))
    table = torch.zeros(b, c, dtype=torch.bool)
    collectives.set_rows(table, torch.arange(b)[mine], observed[mine])
    assert torch.equal(table, observed), "set_rows must write every rank's rows"
    assert collectives.any_rank(r == 1) and not collectives.any_rank(False)
    assert torch.equal(collectives.all_reduce(torch.tensor([1.0 + r])), torch.tensor([3.0]))

    def linear(seed=1):
        torch.manual_seed(seed)
        return torch.nn.Linear(d, c)

    # 1. masked BCE over the global batch's known entries (batch_normaliser)
    one, two = linear(), linear()
    with one_process():
        masked_bce(one(x), targets, observed).backward()
    masked_bce(two(x[mine]), targets[mine], observed[mine]).backward()
    for g1, g2 in zip([p.grad for p in one.parameters()], ddp_grads(list(two.parameters()))):
        close(g1, g2, "masked_bce gradient")

    # 2. SPML's expected-positive regulariser of a global batch mean (batch_mean)
    one, two = linear(), linear()
    with one_process():
        expected_positive_reg(torch.sigmoid(one(x)), 1.5).backward()
    expected_positive_reg(torch.sigmoid(two(x[mine])), 1.5).backward()
    for g1, g2 in zip([p.grad for p in one.parameters()], ddp_grads(list(two.parameters()))):
        close(g1, g2, "expected_positive_reg gradient")

    # 3. a loss coupling the rows of the batch, on the global batch (global_batch)
    one, two = torch.nn.Linear(d, c * 3), torch.nn.Linear(d, c * 3)
    two.load_state_dict(one.state_dict())
    feats = one(x).view(b, c, 3)
    with one_process():
        loss1 = instance_contrastive_loss(feats, targets, observed, generator=torch.Generator().manual_seed(3))
        loss1.backward()
    local = two(x[mine]).view(-1, c, 3)
    loss2 = instance_contrastive_loss(*collectives.global_batch(local, targets[mine], observed[mine]),
                                      generator=torch.Generator().manual_seed(3))
    loss2.backward()
    close(loss1.detach(), loss2.detach(), "instance loss value")
    for g1, g2 in zip([p.grad for p in one.parameters()], ddp_grads(list(two.parameters()))):
        close(g1, g2, "instance loss gradient")

    # 4. BatchNorm with the global batch's statistics (SyncBatchNorm). The ranks' losses sum to the
    # one-process loss, so input gradients match as they are and parameter gradients summed.
    plain = torch.nn.BatchNorm1d(d)
    synced = ddp_model.convert_sync_batchnorm(torch.nn.Sequential(torch.nn.BatchNorm1d(d)))[0]
    assert isinstance(synced, ddp_model.SyncBatchNorm)
    xa, xb = x.clone().requires_grad_(True), x[mine].clone().requires_grad_(True)
    weights = torch.randn(b, d, generator=gen)
    ya, yb = plain(xa), synced(xb)
    (ya * weights).sum().backward()
    (yb * weights[mine]).sum().backward()
    close(collectives.gather_batch(yb.detach()), ya.detach(), "SyncBN output")
    close(synced.running_mean, plain.running_mean, "SyncBN running mean")
    close(synced.running_var, plain.running_var, "SyncBN running var")
    close(xb.grad, xa.grad[mine], "SyncBN input gradient")
    for g1, p2 in zip([plain.weight.grad, plain.bias.grad], [synced.weight, synced.bias]):
        close(g1, collectives.all_reduce(p2.grad), "SyncBN parameter gradient")
    synced.eval()
    close(synced(x), plain.eval()(x), "SyncBN in eval mode")

    # 5b. SARB/DSRB's instance blending pairs global row g with global row B-1-g (possibly on another rank)
    from methods.modules.blending import instance_blend

    feats_all = torch.randn(b, c, 3, generator=gen)
    alpha = torch.tensor(0.7)
    with one_process():
        whole_blend = instance_blend(feats_all, targets, observed, alpha)
    part_blend = instance_blend(feats_all[mine], targets[mine], observed[mine], alpha)
    for a, b_ in zip(part_blend, whole_blend):
        close(a.float(), b_[mine].float(), "instance blend")
    from methods.modules.selective import likelihood_topk

    p_neg = torch.rand(b, c, generator=gen)
    with one_process():
        whole_pick = likelihood_topk(p_neg, observed, 2, "batch")
    assert torch.equal(likelihood_topk(p_neg[mine], observed[mine], 2, "batch"), whole_pick[mine]), "CSL batch top-k"

    # 5. large-loss selection over the global batch's entries
    logits = torch.randn(b, c, generator=gen)
    k = 6
    with one_process():
        whole = large_loss(logits, targets, observed, k, "LL-R")
    part = large_loss(logits[mine], targets[mine], observed[mine], k, "LL-R")
    assert part.k == whole.k and torch.equal(part.modified, whole.modified[mine]), \
        f"large-loss selection {part.k} {whole.k} {part.modified} {whole.modified[mine]}"


def check_prototypes() -> None:
    """Prototype banks (HST, SARB, DSRB) fitted from each rank's contiguous share of the training rows
    equal the banks one process fits from all of them: the features of every rank are gathered."""
    from benchmark.contract.method import Batch, TaskSpec, TrainContext
    from benchmark.core.registry import METHODS, discover

    discover()
    n, c = 18, 4
    gen = torch.Generator().manual_seed(5)
    inputs = torch.randn(n, 8, 2, 2, generator=gen)
    observed = torch.rand(n, c, generator=gen) > 0.3
    targets = (torch.rand(n, c, generator=gen) > 0.4).float() * observed
    task = TaskSpec(num_classes=c, class_names=[f"c{i}" for i in range(c)], num_train=n, feature_dim=8,
                    feature_size=(2, 2), protocol="frozen", label_embeddings=torch.randn(c, 6, generator=gen),
                    label_graph=torch.eye(c))
    small = dict(feature_dim=8, hidden_dim=4, output_dim=8, pool=1, num_prototypes=2, kmeans_n_init=1)

    def batches(rows: range, size: int = 5):
        for start in range(rows.start, rows.stop, size):
            idx = torch.arange(start, min(start + size, rows.stop))
            yield Batch(inputs[idx], targets[idx], observed[idx], idx)

    for name in ("hst", "sarb", "dsrb"):
        cls = METHODS.get(name)
        fields = {k: v for k, v in small.items() if k in cls.config_fields()}
        torch.manual_seed(0)
        method = cls(task, cls.make_config(fields))
        ctx = TrainContext(epoch=0, max_epochs=4, iters_per_epoch=2, seed=0)
        share = collectives.shard(n)
        ctx.iterate_train = lambda: batches(share)
        method.fit_kmeans_prototypes(method.bank, ctx) if name == "hst" else method.refresh_prototypes(ctx)
        ours = {k: v.clone() for k, v in method.state_dict().items() if "prototype" in k or k.endswith("valid")}
        assert ours, f"{name}: no prototype buffers found"
        with one_process():
            ctx.iterate_train = lambda: batches(range(n), size=7)
            method.fit_kmeans_prototypes(method.bank, ctx) if name == "hst" else method.refresh_prototypes(ctx)
        theirs = {k: v for k, v in method.state_dict().items() if k in ours}
        for key in ours:
            close(ours[key].float(), theirs[key].float(), f"{name} {key}", tol=1e-5)
        assert bool(ours[next(k for k in ours if k.endswith("valid"))].any()), f"{name}: no class has prototypes"


def check_resume(out: Path, methods: list[str]) -> None:
    from conftest import records_by_epoch, smoke_spec

    from benchmark.core.registry import discover
    from benchmark.core.run_folder import RunFolder
    from benchmark.engine.lifecycle import run_one

    discover()

    class Stop(Exception):
        pass

    def stop(epoch, max_epochs, val_map):
        if epoch == 1:
            raise Stop

    for method in methods:
        spec = smoke_spec(method, epochs=3)
        whole = run_one(spec, out / "whole")
        try:
            run_one(spec, out / "cut", progress=stop)
            raise AssertionError(f"{method}: the cut run was not cut")
        except Stop:
            pass
        process_group.barrier()
        cut = RunFolder(out / "cut", spec.run_id)
        assert not cut.done and cut.last_checkpoint() is not None, f"{method}: no checkpoint after the cut"
        resumed = run_one(spec, out / "cut")
        if process_group.is_main():
            for kind in ("train", "eval", "recovery"):
                a, b = records_by_epoch(whole, kind), records_by_epoch(resumed, kind)
                assert a == b, f"{method}: {kind} records differ after resuming: {a} != {b}"
            assert not whole.records("rank_check") and not resumed.records("rank_check"), \
                f"{method}: the ranks' states differ"
            assert resumed.spec_record()["parallel"]["world_size"] == 2


def main() -> None:
    process_group.init()
    torch.set_num_threads(1)
    rank = process_group.rank()
    try:
        if sys.argv[1] == "helpers":
            check_helpers()
            check_prototypes()
        else:
            check_resume(Path(sys.argv[2]), sys.argv[3:])
        process_group.barrier()
    finally:
        process_group.shutdown()
    print(f"rank {rank}: ok")


if __name__ == "__main__":
    main()
