"""``python -m benchmark.perf gpu [--methods M ...] [--backbone resnet101] [--image-size 448] [--steps 20]``

Throughput at the paper settings, per method: the finetune training step (backbone + method,
the method's paper batch size) against the bare backbone's forward + backward at the same batch,
each in fp32 and with bf16 autocast and channels_last; the data pipeline (decode + the method's
training augmentation, ``--workers`` loader processes); evaluation (forward only). The backbone has
random weights (throughput does not depend on them); inputs are random images and labels. Prints
one Markdown table. On a CPU it runs at whatever sizes are given (the test uses tiny ones).
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

GOAL_STEP = 0.85        # a method's step should reach this share of the bare backbone's images/s


def _task(num_classes: int, feature_dim: int, feature_size: tuple[int, int], num_train: int):
    from benchmark.contract.method import TaskSpec

    gen = torch.Generator().manual_seed(0)
    return TaskSpec(num_classes=num_classes, class_names=[f"c{i}" for i in range(num_classes)], num_train=num_train,
                    feature_dim=feature_dim, feature_size=feature_size, protocol="finetune",
                    label_embeddings=torch.randn(num_classes, 300, generator=gen),
                    label_graph=torch.rand(num_classes, num_classes, generator=gen).clamp(0.1, 1.0),
                    info={"mask_protocol": "random", "dataset": "coco2014", "expected_num_pos": 2.9, "expected_num_pos_source": "observed",
                          "privileged": []})


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _rate(fn, steps: int, batch: int, device: torch.device) -> float:
    fn()                                   # warm-up (allocator, cudnn autotune, lazy modules)
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _views(cls, size: int) -> int:
    """Views per image of the method's training pipeline (1, or V for a [V, 3, S, S] stack)."""
    from PIL import Image

    from benchmark.engine.backbones import IMAGENET_MEAN, IMAGENET_STD
    from benchmark.engine.transforms import training_pipeline

    transform = training_pipeline(cls.augmentation(cls.make_config({}, profile="paper")), size, IMAGENET_MEAN,
                                  IMAGENET_STD)
    out = transform(Image.new("RGB", (size, size)))
    return out.shape[0] if out.dim() == 4 else 1


def _batch(batch: int, num_classes: int, size: int, device, channels_last: bool, views: int = 1):
    """Random training inputs [B, 3, S, S], or [B, V, 3, S, S] for a multi-view pipeline (each view
    channels_last when asked)."""
    from benchmark.contract.method import Batch

    images = torch.randn(batch * views, 3, size, size, device=device)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    if views > 1:
        images = images.view(batch, views, 3, size, size)
    targets = (torch.rand(batch, num_classes, device=device) < 0.15).float()
    observed = torch.rand(batch, num_classes, device=device) < 0.5
    return Batch(inputs=images, targets=targets * observed, observed=observed, index=torch.arange(batch, device=device))


def _autocast(device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def _paper_batch(name: str) -> int:
    """The method's paper-profile batch size on MS-COCO (8 for a method without an official recipe)."""
    from benchmark.config.recipes import resolve
    from benchmark.core.errors import UserError

    try:
        return resolve(name, "coco2014", "paper").train.batch_size
    except UserError:
        return 8


def measure_method(name: str, backbone_name: str, size: int, steps: int, device: torch.device,
                   num_classes: int = 20, batch: int | None = None) -> list[dict]:
    """Rows (one per precision setting) of images/s for one method."""
    from benchmark.contract.method import TrainContext
    from benchmark.core.registry import get_method
    from benchmark.engine.backbones import build_backbone

    cls = get_method(name)
    batch = batch or _paper_batch(name)
    views = _views(cls, size)
    rows = []
    for bf16, channels_last in ((False, False), (True, True)):
        torch.manual_seed(0)
        backbone = build_backbone(backbone_name, None).to(device)
        if channels_last:
            backbone = backbone.to(memory_format=torch.channels_last)
        with torch.no_grad():
            probe = backbone(torch.zeros(1, 3, size, size, device=device))
        task = _task(num_classes, probe.shape[1], tuple(probe.shape[2:]), num_train=batch)
        method = cls(task, cls.make_config({}, profile="paper"), backbone=backbone).to(device)
        method.ctx = TrainContext(epoch=0, max_epochs=20, iters_per_epoch=steps, device=device, profile="paper")
        data = _batch(batch, num_classes, size, device, channels_last, views)
        single = data.inputs[:, 0] if views > 1 else data.inputs     # the backbone's and evaluation's input
        params = [p for p in method.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=1e-5)

        def bare_step():
            with _autocast(device, bf16):
                loss = backbone(single).float().mean()
            loss.backward()

        def train_step():
            with _autocast(device, bf16):
                loss = sum(method.compute_losses(data, method.ctx).values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        def eval_step():
            with torch.no_grad(), _autocast(device, bf16):
                method.predict_scores(single)

        method.train()
        bare = _rate(bare_step, steps, batch, device)
        train = _rate(train_step, steps, batch, device)
        method.eval()
        evaluation = _rate(eval_step, steps, batch, device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            train_step()
            peak = torch.cuda.max_memory_allocated() / 2**30
        else:
            peak = float("nan")
        rows.append({"method": name, "batch": batch, "precision": "bf16 + channels_last" if bf16 else "fp32",
                     "bare img/s": bare, "train img/s": train, "train / bare": train / bare,
                     "eval img/s": evaluation, "peak GiB": peak})
        method = backbone = optimizer = None     # free the device memory before the next setting
    return rows


def data_pipeline_rate(name: str, size: int, workers: int, batches: int, batch: int = 8) -> float:
    """Decode + the method's training augmentation over synthetic images, with ``workers`` processes."""
    from torch.utils.data import DataLoader

    from benchmark.core.registry import get_method
    from benchmark.engine.backbones import IMAGENET_MEAN, IMAGENET_STD
    from benchmark.engine.data import ImageSource
    from benchmark.engine.transforms import training_pipeline
    from datasets.synthetic import load_synthetic

    cls = get_method(name)
    paths = load_synthetic(size="tiny").train.image_paths
    transform = training_pipeline(cls.augmentation(cls.make_config({}, profile="paper")), size,
                                  IMAGENET_MEAN, IMAGENET_STD)
    source = ImageSource(paths, transform)
    loader = DataLoader(range(len(paths)), batch_size=batch, shuffle=False, num_workers=workers,
                        collate_fn=lambda rows: source.load(list(rows)))
    start, seen = time.perf_counter(), 0
    for i, images in enumerate(loader):
        seen += len(images)
        if i + 1 >= batches:
            break
    return seen / (time.perf_counter() - start)


def table(rows: list[dict]) -> str:
    cols = ["method", "batch", "precision", "bare img/s", "train img/s", "train / bare", "eval img/s", "data img/s",
            "peak GiB"]
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in rows:
        cells = [f"{row[c]:.2f}" if isinstance(row.get(c), float) else str(row.get(c, "")) for c in cols]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmark.perf gpu", description=__doc__.split("\n\n")[1])
    p.add_argument("--methods", nargs="+", help="default: every registered method")
    p.add_argument("--backbone", default="resnet101")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--batch-size", type=int, help="default: each method's paper batch size")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--workers", type=int, default=8)
    p.add_argument("--data-batches", type=int, default=10)
    args = p.parse_args(argv)
    from benchmark.core.quiet import quiet_libraries
    from benchmark.core.registry import METHODS, discover

    quiet_libraries()
    discover()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for name in args.methods or sorted(METHODS.module_dict):
        data = data_pipeline_rate(name, args.image_size, args.workers, args.data_batches)
        for row in measure_method(name, args.backbone, args.image_size, args.steps, device, batch=args.batch_size):
            rows.append({**row, "data img/s": data})
    device_name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU"
    print(f"{device_name}, {args.backbone} (random weights), {args.image_size} px, {args.steps} steps; goal: train / bare "
          f">= {GOAL_STEP}")
    print(table(rows))
    return 0
