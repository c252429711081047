"""DSRB: dual-perspective semantic-aware representation blending (partial-label multi-label recognition).

Paper: T. Pu, T. Chen, H. Wu, Y. Lu, L. Liu, L. Lin, "Dual-Perspective Semantic-Aware
Representation Blending for Multi-Label Image Recognition with Partial Labels", Expert Systems
with Applications 2024 (arXiv 2205.13092, formerly the "SARB journal" version).
Official code: https://github.com/HCPLab-SYSU/HCP-MLR-PL (``DSRB.py``, ``model/DSRB.py``,
``scripts/DSRB.sh``). Spec: ``specs/methods.md`` sections 2, 5.4, 6, 7 and pitfalls P1, P11.

DSRB is SARB (``methods.sarb``: same trunk, alpha / beta, instance-contrastive term and loss
structure) with both blendings on the per-location weighted maps M_{c,l} = a_{c,l} x_l:

* instance perspective: the flipped-batch blend of SARB applied to the maps (identical to the
  vector blend, since the coefficient is constant over locations);
* prototype perspective, location-sensitive: 4 prototypes per class, one per quadrant of the
  map's peak (``methods.modules.blending.peak_quadrants``; at most 100 known-positive maps
  each, the code's zero placeholder map included in the mean, an empty quadrant falling back
  to the class mean); each picked entry is blended with the prototype of a *different*
  quadrant, q' = (q - r) mod 4 with r ~ U{1, 2, 3} per entry; top-k = 1 random unknown class
  per image.

The maps are never materialised: see ``methods/modules/blending.py`` for why blending the
location sums is exact, and ``tests/test_dsrb.py`` for the check against the map-level formulas.

Values the released code leaves undefined (pitfall P1; the code does not run). The DSRB paper's
text could not be retrieved here (no copy in the stored pages), so each comes from SARB's code
and script, the method DSRB extends:
- blending start epoch (``args.proposedMethodEpoch``): 5 = SARB's ``mixupEpoch``, which the DSRB
  script also sets and which already schedules DSRB's prototype computation;
- instance- and prototype-blending loss weights (``args.instanceLossWeight``,
  ``args.prototypeLossWeight``): 1.0 and 1.0, SARB's (unweighted) terms;
- GGNN on (``useGatedGNN``): True, as in SARB and the other HCP methods;
- ``poolingType`` (passed to a semantic-decoupling block that does not accept it): ignored, the
  block is the SARL one.

Deviations from the official code:
- P11 fixed: top-k picks only unknown entries (an image without an unknown label keeps all its
  known labels; the code's top-k over zeros overwrites a known one with 1 - beta);
  ``pick_rule="official"`` restores the code's rule. Classes without prototypes are not picked.
- Prototypes are buffers (checkpointed), stored as location sums [C, 4, D] instead of [C, 4, h,
  w, D] maps (exact for every use the method makes of them); they are computed on the
  un-augmented training rows in eval mode (the code: the augmented, shuffled training loader),
  taken in a seeded random order per refresh so that the <= 100 maps kept per (class, quadrant)
  are a fresh random subset each time, as with the code's shuffled loader; a class with no known
  positive has no prototype and is never picked (the code crashes).
- Blending runs in fp32 and the quadrant argmax on fp32 scores, also under bf16 autocast (the
  code trains in fp32).
  ``placeholder=False`` drops the code's zero map from the quadrant means.
- Schedule rescaled to the run length as for SARB and HST; CPU profiles shrink the dimensions.
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from benchmark.contract.method import TrainContext
from benchmark.core.registry import METHODS
from methods.modules.blending import (
    BlendingConfig,
    QuadrantPrototypes,
    RepresentationBlending,
    peak_quadrants,
    peak_scores,
    pick_unknown,
)


@dataclass(frozen=True)
class DSRBConfig(BlendingConfig):
    top_k: int = 1                     # topK (script 1): unknown classes blended per image
    max_maps: int = 100                # maps kept per class and quadrant (code: size <= 100 check)
    placeholder: bool = True           # code: the zero initial map counts in the quadrant mean


@METHODS.register_module()
class DSRB(RepresentationBlending):
    """Dual-perspective blending: instance-level and location-sensitive prototype-level (quadrants)."""

    name = "dsrb"
    Config = DSRBConfig
    card = RepresentationBlending.card.replace(default_grid=True, display_name="DSRB")

    def __init__(self, task, cfg=None, backbone=None):
        super().__init__(task, cfg, backbone)
        self.quadrant_bank = QuadrantPrototypes(task.num_classes, self.cfg.feature_dim, self.cfg.max_maps,
                                                self.cfg.placeholder)

    @property
    def prototypes_ready(self) -> bool:
        return self.quadrant_bank.ready

    def _features_and_quadrants(self, inputs):
        fmap, attention = self.trunk.decouple(self.features(inputs))
        return self.trunk.semantic.pool(fmap, attention), peak_quadrants(peak_scores(fmap, attention))

    def refresh_prototypes(self, ctx: TrainContext) -> None:
        """Quadrant means of the known-positive maps (eval mode, fixed-order training rows)."""
        classes, feats, quadrants = self.known_positive_rows(ctx, self._features_and_quadrants)
        # The code fills each (class, quadrant) from a shuffled loader, so the <= 100 maps it keeps
        # are a fresh random subset at every refresh; a seeded permutation of the rows does the same.
        order = torch.randperm(len(classes), generator=torch.Generator().manual_seed(ctx.seed * 1000 + ctx.epoch))
        self.quadrant_bank.fit(classes[order], quadrants[order], feats[order])

    def prototype_entries(self, maps, feats, observed):
        """Per entry a prototype of a different quadrant than its own peak; top-k unknown classes per image."""
        fmap, attention = maps
        with torch.no_grad():
            own = peak_quadrants(peak_scores(fmap, attention))
        other = (own - torch.randint(1, 4, own.shape, device=own.device)) % 4
        eligible = ~observed & self.quadrant_bank.valid.unsqueeze(0)
        picked = pick_unknown(observed, eligible, self.cfg.top_k, self.cfg.pick_rule)
        return picked, self.quadrant_bank.lookup(other)
