"""The dataset registry's entries: name -> loader(size, root, preset) returning DatasetSplits."""
from __future__ import annotations

from benchmark.core.registry import DATASETS


@DATASETS.register_module(name="synthetic")
def synthetic(size: str = "default", root: str | None = None, preset: str | None = None, **_):
    """The embedded procedurally generated dataset (offline, CPU-sized); see datasets/synthetic.py."""
    from datasets.synthetic import load_synthetic

    return load_synthetic(size=size)


def _require_root(name: str, root: str | None) -> str:
    """The data root of a real dataset, or a one-line UserError naming the expected layout.

    Real datasets always load their full official splits: ``size`` (the synthetic set's size) is
    ignored; ``preset`` (hcp | clsl | None = the dataset's default) picks the data choices of a
    code base (datasets/presets.py).
    """
    if root is None:
        from importlib import import_module

        from benchmark.core.errors import UserError

        layout = import_module(f"datasets.{name}").LAYOUT
        raise UserError(f"dataset {name} needs --data-root PATH (expected layout: {layout}); "
                        f"check a folder with: run_benchmark.py prepare --dataset {name} --data-root PATH")
    return root


@DATASETS.register_module(name="voc2007")
def voc2007(size: str = "default", root: str | None = None, preset: str | None = None, **_):
    """PASCAL VOC 2007 (20 classes, trainval/test) from a VOCdevkit folder; see datasets/voc2007.py."""
    from datasets.voc2007 import load_voc2007

    return load_voc2007(_require_root("voc2007", root), preset=preset)


@DATASETS.register_module(name="coco2014")
def coco2014(size: str = "default", root: str | None = None, preset: str | None = None, **_):
    """MS-COCO 2014 (80 classes, train2014/val2014) from a COCO folder; see datasets/coco2014.py."""
    from datasets.coco2014 import load_coco2014

    return load_coco2014(_require_root("coco2014", root), preset=preset)


@DATASETS.register_module(name="nuswide")
def nuswide(size: str = "default", root: str | None = None, preset: str | None = None, **_):
    """NUS-WIDE (81 concepts, official split), release or CLSL-list layout; see datasets/nuswide.py."""
    from datasets.nuswide import load_nuswide

    return load_nuswide(_require_root("nuswide", root), preset=preset)


@DATASETS.register_module(name="vg200")
def vg200(size: str = "default", root: str | None = None, preset: str | None = None, **_):
    """VG-200 (200 Visual Genome categories, HCP/SSGRL lists); see datasets/vg200.py."""
    from datasets.vg200 import load_vg200

    return load_vg200(_require_root("vg200", root), preset=preset)


@DATASETS.register_module(name="voc2012")
def voc2012(size: str = "default", root: str | None = None, preset: str | None = None, **_):
    """PASCAL VOC 2012 (20 classes, train / val as test, SPML's lists); see datasets/voc2012.py."""
    from datasets.voc2012 import load_voc2012

    return load_voc2012(_require_root("voc2012", root), preset=preset)


@DATASETS.register_module(name="cub")
def cub(size: str = "default", root: str | None = None, preset: str | None = None, **_):
    """CUB-200-2011 with its 312 attributes as labels (official train/test split, as SPML); see datasets/cub.py."""
    from datasets.cub import load_cub

    return load_cub(_require_root("cub", root), preset=preset)
