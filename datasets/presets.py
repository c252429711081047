"""Dataset presets: the data choices of each official code base, by name.

``--preset hcp`` follows the HCP code (``HCPLab-SYSU/HCP-MLR-PL``: SST, SARB, HST, DSRB) and
``--preset clsl`` the CLSL code (``Qingdandian/CLSL``); spec sections 1.2-1.5 and 8.2-8.6.

===================  =============================  ===========================================
choice               hcp                            clsl
===================  =============================  ===========================================
VOC difficult-only   ``negative`` (spec 1.2)        ``ignore``: marked in ``LabelSet.ignore``
                                                    (excluded from AP), trained as negative
COCO empty images    kept as all-negative rows      dropped (counted in ``info``)
COCO image order     order of ``images`` in JSON    sorted by image id
NUS-WIDE             (not used by HCP; clsl rules)  unlabelled images dropped
image size           448                            448 (NUS-WIDE: 224)
mask protocol        ``random`` (numpy, seed 0)     ``random_clsl`` (torch, seed 0)
===================  =============================  ===========================================

The last test batch is never dropped under any preset (pitfall P2: the official HCP loader drops
it); every preset records ``drop_last_test: False`` so that a result says so.

Default preset when none is given (:data:`DEFAULT_PRESET`): ``hcp`` for VOC 2007, MS-COCO 2014
and VG-200 (three of the four ported methods come from the HCP code, and only HCP uses VG-200),
``clsl`` for NUS-WIDE (only CLSL uses it).

VOC 2012 and CUB-200-2011 are the single-positive papers' datasets (SPML, Cole et al., and the
code bases built on it); neither HCP nor CLSL uses them. Their loaders follow the SPML files
whatever the preset; the presets only set what they set elsewhere: the VOC difficult-only rule
(``hcp``: negative, which is also SPML's; ``clsl``: ignore), the image size (448, SPML's) and the
mask protocol. Their default preset is ``hcp`` (SPML's VOC rule); the single-positive papers'
protocol is ``--mask-protocol single_positive``.
"""
from __future__ import annotations

from benchmark.core.errors import UserError

PRESETS: dict[str, dict] = {
    "hcp": {
        "description": "HCP-MLR-PL code (SST, SARB, HST, DSRB)",
        "voc_difficult": "negative",
        "coco_keep_empty": True,
        "coco_order": "file",
        "nuswide_drop_unlabeled": True,
        "image_size": 448,
        "nuswide_image_size": 448,
        "mask_protocol": "random",
        "drop_last_test": False,
    },
    "clsl": {
        "description": "CLSL code (Qingdandian/CLSL)",
        "voc_difficult": "ignore",
        "coco_keep_empty": False,
        "coco_order": "id",
        "nuswide_drop_unlabeled": True,
        "image_size": 448,
        "nuswide_image_size": 224,
        "mask_protocol": "random_clsl",
        "drop_last_test": False,
    },
}
DEFAULT_PRESET: dict[str, str] = {"voc2007": "hcp", "coco2014": "hcp", "vg200": "hcp", "nuswide": "clsl",
                                  "voc2012": "hcp", "cub": "hcp"}
_DATASET_KEYS: dict[str, dict[str, str]] = {  # option name the loader takes -> key in PRESETS
    "voc2007": {"difficult": "voc_difficult", "image_size": "image_size"},
    "coco2014": {"keep_empty": "coco_keep_empty", "order": "coco_order", "image_size": "image_size"},
    "nuswide": {"drop_unlabeled": "nuswide_drop_unlabeled", "image_size": "nuswide_image_size"},
    "vg200": {"image_size": "image_size"},
    "voc2012": {"difficult": "voc_difficult", "image_size": "image_size"},
    "cub": {"image_size": "image_size"},
}


def resolve_preset(dataset: str, preset: str | None) -> str:
    """The preset name in force: ``preset`` checked, or the dataset's default when None."""
    if dataset not in _DATASET_KEYS:
        raise UserError(f"no presets for dataset '{dataset}'; presets cover: {', '.join(_DATASET_KEYS)}")
    name = DEFAULT_PRESET[dataset] if preset is None else str(preset).strip().lower()
    if name not in PRESETS:
        raise UserError(f"unknown --preset '{preset}'; choose one of: {', '.join(PRESETS)}")
    return name


def preset_options(dataset: str, preset: str | None) -> dict:
    """The loader options of ``dataset`` under ``preset`` (None = the dataset's default preset).

    Keys: ``preset`` (the resolved name), the loader's own option names (``difficult``,
    ``keep_empty``, ``order``, ``drop_unlabeled``), ``image_size``, ``mask_protocol`` and
    ``drop_last_test`` (always False).
    """
    name = resolve_preset(dataset, preset)
    table = PRESETS[name]
    options = {option: table[key] for option, key in _DATASET_KEYS[dataset].items()}
    options.update(preset=name, mask_protocol=table["mask_protocol"], drop_last_test=False)
    return options
