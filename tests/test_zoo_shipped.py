import json

from core.zoo.recipe import RECIPES, recipe_for
from core.zoo.shipped import sha256_of, shipped_base, write_shipped_base


def test_shipped_base_matches_the_demo_recipe_and_its_checksum():
    # The demo build skips pretraining only with this file; a recipe change without a new
    # `python -m core zoo pretrain` would silently make every fresh clone pretrain for ~18 min.
    f = shipped_base(RECIPES["demo"])
    assert f is not None and f.stat().st_size < 25 * 2**20
    info = json.loads((f.parent / "recipe.json").read_text())
    assert info["pretrain_recipe"]["pretrain_steps"] == RECIPES["demo"].pretrain_steps
    assert info["sha256"] == sha256_of(f)


def test_a_written_base_is_found_only_for_its_recipe_and_a_corrupt_one_is_refused(tmp_path, micro_zoo):
    import pytest

    r = RECIPES["micro"]
    f = write_shipped_base(micro_zoo.base(), r, {"note": "test"}, tmp_path)
    assert shipped_base(r, tmp_path) == f
    assert shipped_base(recipe_for("micro", {"seed": "1"}), tmp_path) is None
    f.write_bytes(f.read_bytes()[:-1] + b"\0")
    with pytest.raises(RuntimeError, match="corrupt"):
        shipped_base(r, tmp_path)
