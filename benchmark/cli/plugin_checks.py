"""The contract every method keeps, as checks the CLI runs on a ``--plugins`` method before its first
run (``tests/test_contract.py`` runs the same checks on every registered method).

1. On a toy task: ``compute_losses`` returns finite ``loss_*`` terms that backpropagate,
   ``predict_scores`` gives ``[B, C]`` logits, and a state-dict round trip predicts the same.
2. On the smoke dataset: flipping every hidden (unknown) training label changes nothing the method
   computes (two short runs, compared record by record).

A plugin that passed is remembered by its file's sha256 (under the cache folder), so the check
costs seconds once per version of the file. The suite prevents accidental leaks this way; it
does not sandbox code that a user chose to run in the same process.
"""
from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import torch

from benchmark.core.errors import UserError


def toy_task(num_classes: int = 6):
    from benchmark.contract.method import TaskSpec

    graph = torch.eye(num_classes) * 0.5 + 0.5
    return TaskSpec(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)], num_train=16,
                    feature_dim=32, feature_size=(4, 4), protocol="frozen", label_embeddings=torch.randn(num_classes, 50),
                    label_graph=graph, info={"mask_protocol": "random", "dataset": "synthetic", "expected_num_pos": 2.0,
                                             "expected_num_pos_source": "observed", "privileged": []})


def check_on_toy_task(name: str) -> None:
    """Losses, gradients, prediction shape and state-dict round trip; raises AssertionError."""
    from benchmark.contract.method import Batch
    from benchmark.core.registry import get_method

    cls = get_method(name)
    task = toy_task()
    if "clip" in cls.card.requires:           # the tiny random CLIP; a CLIP-trunk method gets its trunk's width
        from benchmark.engine.clip import tiny_clip

        clip = tiny_clip()
        width = clip.visual.attnpool.v_proj.in_features if "clip_trunk" in cls.card.requires else task.feature_dim
        task = dataclasses.replace(task, clip=clip, feature_dim=width)
    torch.manual_seed(0)
    method = cls(task, cls.make_config({}))
    feats = torch.randn(8, task.feature_dim, 4, 4)
    batch = Batch(inputs=feats, targets=(torch.rand(8, 6) > 0.5).float(), observed=torch.rand(8, 6) > 0.3,
                  index=torch.arange(8))
    method.train()
    losses = method.compute_losses(batch, method.ctx)
    assert losses and all(k.startswith("loss") for k in losses), f"loss keys {sorted(losses)} must start with 'loss'"
    total = sum(losses.values())
    assert torch.isfinite(total), f"losses are not finite: {losses}"
    total.backward()
    method.eval()
    with torch.no_grad():
        scores = method.predict_scores(feats)
    assert tuple(scores.shape) == (8, 6), f"predict_scores gives shape {tuple(scores.shape)}, expected (8, 6)"
    torch.manual_seed(0)
    clone = cls(task, cls.make_config({}))
    clone.load_state_dict(copy.deepcopy(method.state_dict()))
    clone.eval()
    with torch.no_grad():
        assert torch.equal(clone.predict_scores(feats), scores), "a state-dict round trip changes the predictions"


def smoke_spec(method: str, ratio: float = 0.3, epochs: int = 2):
    from benchmark.config.run_spec import profile_spec

    return profile_spec(method, "smoke", ratio, train={"epochs": epochs}, embeddings="random")


def flipped_hidden_labels(splits, spec):
    """A copy of ``splits`` whose hidden (unknown under the spec's mask) training labels are flipped."""
    from datasets.masks import get_mask

    mask = get_mask(splits.train, spec.mask_protocol, spec.ratio, spec.seed).observed
    flipped = copy.copy(splits)
    flipped.train = splits.train.subset(range(len(splits.train)), splits.train.name)
    flipped.train.labels = (splits.train.labels ^ (~mask)).astype("uint8")
    return flipped


def check_hidden_labels(name: str, work: Path) -> None:
    """Two smoke runs, the second with every hidden training label flipped: identical records."""
    import benchmark.engine.prepared_run as prepared
    from benchmark.engine.lifecycle import run_one

    spec = smoke_spec(name)
    base = prepared.load_dataset(spec.dataset, spec.dataset_size)
    flipped = flipped_hidden_labels(base, spec)
    first = run_one(spec, work / "a", say=lambda line: None)
    original = prepared.load_dataset
    prepared.load_dataset = lambda *a, **k: flipped      # what PreparedRun reads the dataset with
    try:
        second = run_one(spec, work / "b", say=lambda line: None)
    finally:
        prepared.load_dataset = original
    strip = lambda recs: [{k: v for k, v in r.items() if k != "epoch_seconds"} for r in recs]  # noqa: E731
    assert strip(first.records("train")) == strip(second.records("train")), \
        "its training records change when hidden labels are flipped"
    assert first.records("eval") == second.records("eval"), "its evaluations change when hidden labels are flipped"


def check_plugin_method(name: str) -> None:
    """Run the contract on a plugin method once per version of its file; a failure is a UserError."""
    from benchmark.core.cache import cache_dir
    from benchmark.core.files import sha256_file
    from benchmark.core.registry import get_method

    source = Path(get_method(name).plugin_file)
    stamp = cache_dir("contract") / f"{name}-{sha256_file(source)[:16]}.ok"
    if stamp.is_file():
        return
    print(f"checking plugin method {name} ({source}) against the method contract ...")
    try:
        check_on_toy_task(name)
        with tempfile.TemporaryDirectory() as tmp:
            check_hidden_labels(name, Path(tmp))
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of user code is the plugin's problem
        line = f"{type(exc).__name__}: {exc}".splitlines()[0]
        raise UserError(f"plugin method {name} ({source}) breaks the method contract: {line}; "
                        "see README, 'Add a method'") from None
    stamp.write_text("ok\n")
