"""SSGRL: the SARL trunk of HST / SARB / DSRB / SST trained with the HCP masked BCE and nothing else.

Paper: T. Chen, M. Xu, X. Hui, H. Wu, L. Lin, "Learning Semantic-Specific Graph Representation for
Multi-Label Image Recognition", ICCV 2019, https://arxiv.org/abs/1908.07325; as the partial-label
baseline ("SSGRL" rows) of the HCP papers (SST, AAAI 2022; SARB, AAAI 2022; HST, IJCV 2024; DSRB).
Official code: https://github.com/HCPLab-SYSU/SSGRL (full labels); HCP-MLR-PL ships no SSGRL script, so
the trunk is the one its methods share (``model/SemanticDecoupling.py``, ``model/GraphNeuralNetwork.py``,
``model/Element_Wise_Layer.py``) with the partial BCE of its losses. Specs: ``specs/methods.md`` sections 2
and 2.1.

Model: :class:`methods.modules.sarl.SARLTrunk` built by :class:`SARLMethod` from the same config
fields and the same profile dimensions as HST / SARB / DSRB (``SARL_PROFILES``), so every SARL-based
method's gain over this row is the method's, not its trunk's. Loss: ``loss_bce`` = the batch-global
masked BCE over the known labels (spec 2.1). No schedule, no state.

Deviations from the official code:
- The same ones as HST's trunk (see ``methods/hst.py``): exact reorderings of the semantic attention,
  the graph from ``datasets.side_info.cooccurrence_graph`` (P5), dimensions and the 2x2 pooling as
  config fields shrunk on the CPU profiles, the finetune protocol freezing a ResNet's stem to layer3
  with BatchNorm in eval mode (spec 1.4).
- No released script sets SSGRL's partial-label recipe; the paper profile uses batch 8 as the SST /
  SARB / DSRB scripts do [GUESS: the papers' baseline rows were trained with their recipe].
Pitfall (P…, C…) and fixture (F…, W…) labels refer to docs/pitfalls.md.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from benchmark.contract.method import Batch, TrainContext
from benchmark.core.registry import METHODS
from methods.modules.losses import masked_bce
from methods.modules.sarl import SARLMethod


@dataclass(frozen=True)
class SSGRLConfig:
    feature_dim: int = 1024            # changeChannel: 1x1 conv + BN to this size (none if the maps already have it)
    hidden_dim: int = 512              # semantic-decoupling intermediate size
    output_dim: int = 1024             # GGNN output layer width
    ggnn_steps: int = 3                # GGNN time steps
    pool: int = 2                      # 2x2 avg-pool of the 14x14 ResNet-101 maps; 1 = none (small maps)
    freeze_backbone: bool = True       # finetune + timm ResNet: stem..layer3 frozen, BN in eval (spec 1.4)

    def __post_init__(self):
        if min(self.feature_dim, self.hidden_dim, self.output_dim, self.pool) < 1 or self.ggnn_steps < 0:
            raise ValueError(f"feature_dim, hidden_dim, output_dim and pool must be >= 1 and ggnn_steps >= 0; got "
                             f"{self.feature_dim}, {self.hidden_dim}, {self.output_dim}, {self.pool}, {self.ggnn_steps}")


@METHODS.register_module()
class SSGRL(SARLMethod):
    """The SARL trunk with the masked BCE only: the trunk-matched baseline of the HCP methods."""

    name = "ssgrl"
    Config = SSGRLConfig
    # Batch 8, as the SST / SARB / DSRB scripts (no SSGRL script was released).
    card = SARLMethod.card.replace(default_grid=True, display_name="SSGRL")

    def compute_losses(self, batch: Batch, ctx: TrainContext) -> dict[str, Tensor]:
        logits = self.trunk(self.features(batch.inputs))[0]
        return {"loss_bce": masked_bce(logits, batch.targets, batch.observed)}
