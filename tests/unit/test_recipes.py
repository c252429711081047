"""Recipes as data: every registered method has a sourced recipe per dataset and profile, the values are
the official scripts' (hand-picked ones checked against their cited lines), and the engine trains on
exactly the resolved recipe."""
from __future__ import annotations

import json

import pytest

from benchmark.config.recipes import TRAIN_FIELDS, registered, resolve
from benchmark.core.registry import METHODS, discover

discover()

HCP = "HCPLab-SYSU/HCP-MLR-PL@d9fd300"
CLSL = "Qingdandian/CLSL@2f9e916"
SPML = "elijahcole/single-positive-multi-label@89152d5"
LLM = "snucml/LargeLossMatters@5025d16"
BGE = "youngwk/BridgeGapExplanationPAMC@4a1986c"
ASL = "Alibaba-MIIL/ASL@8c9e0bd"
CSL = "Alibaba-MIIL/PartialLabelingCSL@534f3ce"
IGN = "gyeong-ryeol-song/SPML-IGNORE@5bfa563"

# (method, dataset, field, value, source): one value per method, read at the cited line of the official
# code (the line holds that number: e.g. scripts/HST.sh:23 sets batchSize=32).
PICKED = [
    ("hst", "coco2014", "batch_size", 32, f"{HCP}:scripts/HST.sh:23"),
    ("sst", "coco2014", "batch_size", 8, f"{HCP}:scripts/SST.sh:23"),
    ("sarb", "coco2014", "lr", 1e-5, f"{HCP}:scripts/SARB.sh:24"),
    ("dsrb", "coco2014", "weight_decay", 5e-4, f"{HCP}:scripts/DSRB.sh:26"),
    ("ssgrl", "voc2007", "epochs", 20, f"{HCP}:scripts/SST.sh:19"),
    ("partial_bce", "coco2014", "step_size", 10, f"{HCP}:scripts/SST.sh:21"),
    ("clsl", "voc2007", "lr", 9e-5, f"{CLSL}:README.md:56"),
    ("clsl_baseline", "nuswide", "batch_size", 128, f"{CLSL}:README.md:67"),
    ("an", "coco2014", "epochs", 10, f"{SPML}:train.py:298"),
    ("an_ls", "coco2014", "config.ls_coef", 0.1, f"{SPML}:train.py:278"),
    ("wan", "nuswide", "image_size", 448, f"{SPML}:datasets.py:57"),
    ("epr", "coco2014", "config.expected_num_pos", 2.9, f"{SPML}:train.py:237"),
    ("role", "nuswide", "config.estimator_lr_mult", 10.0, f"{SPML}:train.py:274"),
    ("ll_r", "coco2014", "batch_size", 16, f"{LLM}:config.py:93"),
    ("ll_ct", "nuswide", "lr", 1e-5, f"{LLM}:config.py:94"),
    ("ll_cp", "coco2014", "epochs", 10, f"{LLM}:config.py:78"),
    ("boostlu", "coco2014", "config.alpha", 5.0, f"{BGE}:config.py:80"),
    ("asl", "coco2014", "lr", 1e-4, f"{ASL}:train.py:17"),
    ("csl", "coco2014", "lr", 2e-4, f"{CSL}:train.py:23"),
    ("ignore", "coco2014", "config.spbc_weight", 0.1, f"{IGN}:README.md:36"),
    ("em", "cub", "lr", 1e-4, "Correr-Zhou/SPML-AckTheUnknown@ae1ccaf:main.py:332"),
    ("em_apl", "coco2014", "config.beta", 0.9, "Correr-Zhou/SPML-AckTheUnknown@ae1ccaf:main.py:350"),
    ("gr_loss", "coco2014", "config.q2", 0.01, "yan4xi1/GRLoss@5e13f7f:config.py:102"),
    ("dualcoop", "voc2007", "lr", 1e-3, "sunxm2357/DualCoOp@49e71d7:README.md:66"),
    ("scpnet", "coco2014", "config.hard_k", 2, "jameslahm/SCPNet@d56341a:configs/scpnet+coco.yaml:13"),
    ("aevlp", "cub", "config.threshold", 0.005, "Fsoft-AIC/AEVLP@0bad82a:configs/cub.json:57"),
    ("vlpl", "voc2012", "config.alpha", 0.2, "mvrl/VLPL@ed09b59:main_clip.py:304"),
]


def test_every_registered_method_has_a_hand_picked_check():
    assert {m for m, *_ in PICKED} == set(METHODS.module_dict)


@pytest.mark.parametrize("method, dataset, field, value, source", PICKED)
def test_hand_picked_values_match_their_cited_lines(method, dataset, field, value, source):
    recipe = resolve(method, dataset, "official").to_json()
    got = recipe["config"][field.split(".", 1)[1]] if field.startswith("config.") else recipe[field]
    assert got == pytest.approx(value)
    assert recipe["sources"][field] == source


def test_json_lists_every_method_on_the_real_datasets_and_cpu_profiles_with_sources(capsys):
    from benchmark.cli.subcommands import cmd_recipes

    assert cmd_recipes(["--format", "json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    methods = set(METHODS.module_dict)
    for profile, datasets in (("paper", ("voc2007", "coco2014", "nuswide")), ("official", ("voc2007", "coco2014")),
                              ("smoke", ("synthetic",)), ("default", ("synthetic",))):
        for dataset in datasets:
            assert {r["method"] for r in listed if (r["profile"], r["dataset"]) == (profile, dataset)} == methods
    for row in listed:
        assert {"lr", "weight_decay", "epochs", "batch_size", "image_size", "optimizer", "precision"} <= set(row)
        # every training value has a source; official ones cite repo@commit:path:line
        assert set(TRAIN_FIELDS) <= set(row["sources"]) | {"test_image_size", "betas", "momentum", "schedule",
                                                           "step_size", "milestones", "gamma", "warmup_epochs",
                                                           "pct_start", "div_factor", "final_div_factor",
                                                           "schedule_epochs", "grad_clip"}
        for name in ("lr", "epochs", "batch_size", "weight_decay", "optimizer"):
            source = row["sources"][name]
            assert source.startswith("suite") or ("@" in source and source.count(":") >= 2), (row["method"], name)
    # vg200 only where the official code has it (the HCP code base), CLSL never
    vg = {r["method"] for r in listed if r["dataset"] == "vg200"}
    assert "hst" in vg and "clsl" not in vg


def test_paper_keeps_the_common_trunk_official_the_methods_own_backbone():
    paper, official = resolve("asl", "coco2014", "paper"), resolve("asl", "coco2014", "official")
    assert (official.train.backbone, official.train.image_size) == ("tresnet_m", 224)
    assert (paper.train.backbone, paper.train.image_size) == ("resnet101", 448)
    assert paper.train.lr == official.train.lr == 1e-4 and paper.train.precision == "fp16"
    assert any("tresnet_m" in d for d in paper.deviations)
    # a ResNet-101 method: paper and official are the same recipe
    assert resolve("clsl", "nuswide", "paper").train == resolve("clsl", "nuswide", "official").train
    assert resolve("clsl", "nuswide", "paper").train.image_size == 224


def test_inherited_recipes_say_so_and_pitfall_switches_are_recorded_not_applied():
    assert resolve("partial_bce", "voc2007", "paper").inherited        # no official code: HCP script recipe
    assert resolve("an", "voc2007", "paper").inherited                 # the code has VOC 2012 only
    assert resolve("hst", "coco2014", "paper").inherited is None
    cp = resolve("ll_cp", "coco2014", "paper")
    assert cp.info["official_switches"]["cp_mode"] == "as_shipped" and "cp_mode" not in cp.config
    hst = resolve("hst", "coco2014", "paper")
    assert hst.info["official_switches"]["prototype_sign"] == "official" and "prototype_sign" not in hst.config


def test_cpu_profiles_are_the_suites_own_recipe():
    for recipe in registered(("smoke", "default")):
        assert set(recipe.sources.values()) == {"suite: benchmark/config/profiles.py"}
        assert recipe.train.precision == "fp32" and recipe.config == {}
    default = resolve("hst", "synthetic", "default").train
    assert (default.optimizer, default.lr, default.weight_decay, default.epochs, default.schedule,
            default.step_size) == ("Adam", 1e-3, 1e-4, 9, "step", 6)


def test_markdown_escapes_and_lists_sources(capsys):
    from benchmark.cli.subcommands import cmd_recipes

    assert cmd_recipes(["--methods", "hst", "--profile", "official", "--dataset", "coco2014"]) == 0
    text = capsys.readouterr().out
    assert "| hst | resnet101 | 448 | Adam | 1e-05 | 0.0005 | step | 20 | 32 | fp32 |" in text
    assert f"batch_size `{HCP}:scripts/HST.sh:23`" in text


def test_docs_recipes_is_the_current_output(capsys):
    """docs/recipes.md is generated from the recipe files; it must not go stale."""
    from pathlib import Path

    from benchmark.cli.subcommands import cmd_recipes

    assert cmd_recipes([]) == 0
    current = capsys.readouterr().out
    doc = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"
    assert doc.read_text() == current, "docs/recipes.md is stale: python run_benchmark.py recipes > docs/recipes.md"
