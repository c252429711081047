"""The method card: validated on construction, read by the harness, and the only place for its fields."""
from __future__ import annotations

import pytest

from benchmark.contract.card import MethodCard
from benchmark.contract.method import Method
from benchmark.core.errors import UserError


@pytest.mark.parametrize("attribute", ["paper_batch_size", "optim_recipe"])
def test_training_settings_on_a_method_class_point_to_the_recipes(attribute):
    """How a method trains is its recipe (benchmark/config/recipes/), not the class or the card."""
    with pytest.raises(UserError, match=f"sets '{attribute}'; it now belongs in the method's recipe"):
        type("Legacy", (Method,), {"name": "legacy", attribute: 8})
    with pytest.raises(TypeError):
        MethodCard(paper_batch_size=8)


@pytest.mark.parametrize("kwargs, message", [
    ({"requires": {"label_embedings"}}, "label_embedings"),
    ({"relative_cost": 0}, "relative_cost"),
    ({"display_name": "two\nlines"}, "display_name"),
    ({"display_name": ""}, "display_name"),
    ({"display_name": "x" * 41}, "display_name"),
])
def test_bad_card_values_are_one_line_errors(kwargs, message):
    with pytest.raises(UserError, match=message):
        MethodCard(**kwargs)


def test_card_is_immutable_and_replace_keeps_the_rest():
    base = MethodCard(requires={"label_graph"}, trunk_baseline="ssgrl", profile_overrides={"smoke": {"dim": 8}})
    child = base.replace(default_grid=True)
    assert child.requires == frozenset({"label_graph"}) and child.trunk_baseline == "ssgrl" and child.default_grid
    assert not base.default_grid
    with pytest.raises(TypeError):
        base.profile_overrides["smoke"]["dim"] = 9              # a subclass cannot edit its base's card
    assert child.overrides("smoke") == {"dim": 8} and child.overrides("paper") == {}


@pytest.mark.parametrize("attribute", ["in_default_grid", "requires", "relative_cost", "profile_overrides"])
def test_a_class_setting_a_card_field_as_an_attribute_is_refused(attribute):
    with pytest.raises(UserError, match=f"sets '{attribute}' on the class.*card = MethodCard"):
        type("Legacy", (Method,), {"name": "legacy", attribute: True})


def test_profile_overrides_on_the_card_reach_make_config():
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Cfg:
        width: int = 512

    class Tiny(Method):
        name = "tiny"
        Config = Cfg
        card = MethodCard(profile_overrides={"smoke": {"width": 8}})

    assert Tiny.make_config({}, profile="smoke").width == 8
    assert Tiny.make_config({"width": 4}, profile="smoke").width == 4      # --set wins
    assert Tiny.make_config({}, profile="paper").width == 512


def test_every_registered_method_names_itself_and_a_subclass_does_not_take_its_bases_name():
    from benchmark.contract.card import display_name
    from benchmark.core.registry import METHODS, discover

    discover()
    unnamed = sorted(k for k, cls in METHODS.module_dict.items() if display_name(cls) == k)
    assert not unnamed, f"set card = ...(display_name=...) on {unnamed}"
    assert display_name(METHODS.get("partial_bce")) == "Partial-BCE"
    assert display_name(METHODS.get("ll_ct")) == "LL-Ct"
    child = type("Child", (METHODS.get("ll_ct"),), {"name": "child"})      # inherits LL-Ct's card
    assert display_name(child) == "child"
