"""Per-method batch sizes of the paper profile (each method's recipe: HCP scripts, pitfall P15; the CLSL
README), resolved by the command line into each RunSpec; an explicit --batch-size wins. Nothing is trained."""
from __future__ import annotations

import pytest

from benchmark.cli.parser import run_parser
from benchmark.cli.plan import grid_runs


def _batch_sizes(tmp_path, *extra: str) -> dict:
    """{(method, dataset): batch size} of the RunSpecs the command line builds (one ratio, one seed)."""
    from benchmark.core.registry import discover

    discover()
    weights = tmp_path / "resnet101.pth"
    weights.write_bytes(b"not read: only its existence is checked here")
    args = run_parser().parse_args(["--methods", "partial_bce", "hst", "clsl", "--ratios", "0.5", "--embeddings", "glove",
                                     "--data-root", str(tmp_path), "--backbone-weights", str(weights), *extra])
    runs, _, _ = grid_runs(args)
    sizes = {(r.method, r.dataset): r.batch_size for r in runs}
    assert all(r.to_dict()["train"]["batch_size"] == r.batch_size for r in runs)     # what spec.json records
    return sizes


@pytest.mark.parametrize("dataset, clsl", [("voc2007", 64), ("coco2014", 52), ("nuswide", 128)])
def test_paper_profile_uses_each_method_official_batch_size(tmp_path, dataset, clsl):
    sizes = _batch_sizes(tmp_path, "--profile", "paper", "--dataset", dataset)
    assert sizes == {("partial_bce", dataset): 8, ("hst", dataset): 32, ("clsl", dataset): clsl}


def test_explicit_batch_size_wins_and_other_profiles_are_unchanged(tmp_path):
    sizes = _batch_sizes(tmp_path, "--profile", "paper", "--dataset", "coco2014", "--batch-size", "16")
    assert set(sizes.values()) == {16}
    assert set(_batch_sizes(tmp_path, "--profile", "default", "--dataset", "voc2007").values()) == {64}


def test_a_dataset_without_an_official_recipe_is_refused_with_the_way_out(tmp_path):
    """The CLSL code has no VG-200 recipe: its batch size and lr are unknown, so the grid stops before
    training (the HCP methods, whose code has VG, resolve)."""
    from benchmark.core.errors import UserError

    with pytest.raises(UserError, match="clsl has no paper recipe on vg200.*--profile default"):
        _batch_sizes(tmp_path, "--profile", "paper", "--dataset", "vg200")
