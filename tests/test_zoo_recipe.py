import pytest

from core.zoo import recipe as R
from core.zoo import scenes as S


def test_recipe_overrides_are_typed_and_checked():
    r = R.recipe_for("micro", {"ft_steps": "7", "ft_lr": "0.01"})
    assert r.ft_steps == 7 and r.ft_lr == 0.01 and r.hash() != R.RECIPES["micro"].hash()
    try:
        R.recipe_for("micro", {"nope": "1"})
    except ValueError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("unknown field accepted")


def test_recipes_that_cannot_be_built_are_refused():
    with pytest.raises(ValueError, match="unknown zoo kind"):
        R.recipe_for("huge")
    with pytest.raises(ValueError, match="not a int"):
        R.recipe_for("micro", {"ft_steps": "many"})
    with pytest.raises(ValueError, match="need one or more of"):
        R.recipe_for("micro", {"tasks": "shapes,cats"})
    with pytest.raises(ValueError, match="at least ft_batch"):
        R.recipe_for("micro", {"n_train": "8"})
    assert R.recipe_for("micro", {"tasks": "shapes,colors"}).tasks == ("shapes", "colors")


def test_recipe_hash_follows_the_image_generator(monkeypatch):
    r = R.RECIPES["demo"]
    h, ph = r.hash(), r.pretrain_hash()
    monkeypatch.setattr(S, "MAIN_OBJECT_SIZE", (12.0, 15.0))
    assert r.hash() != h and r.pretrain_hash() != ph  # an older generator's zoo or base is never reused


def test_workers_do_not_change_the_hash_but_every_weight_field_does():
    r = R.RECIPES["micro"]
    assert R.recipe_for("micro", {"workers": "2"}).hash() == r.hash()
    for field, value in (("seed", "1"), ("ft_warmup", "0.2"), ("pretrain_steps", "31"), ("aux_weight", "0.1")):
        assert R.recipe_for("micro", {field: value}).hash() != r.hash(), field
    assert R.recipe_for("micro", {"ft_lr": "0.01"}).pretrain_hash() == r.pretrain_hash()  # the base does not change


def test_the_styled_zoo_is_the_shipped_base_with_style_shifted_tasks_and_longer_fine_tunes():
    from core.cli.options import ZOO_KINDS
    from core.zoo.build import build_command
    from core.zoo.data import STYLED_TASKS, STYLED_ZOO_TASKS
    from core.zoo.shipped import shipped_base

    assert ZOO_KINDS == tuple(R.RECIPES)  # the CLI's and the Models page's choices are the recipes
    demo, styled = R.RECIPES["demo"], R.RECIPES["styled"]
    assert styled.tasks == STYLED_ZOO_TASKS and len(styled.tasks) == 8
    assert {"digits_typed", "letters_novel", "shapes_textured", "counts_mixed"} <= set(styled.tasks) & set(STYLED_TASKS)
    assert not {"colors", "position", "arrows", "patterns"} & set(styled.tasks)  # solved zero-shot by the base
    assert (styled.ft_steps, styled.ft_lr, styled.n_train) == (450, 1e-3, 28800)
    assert styled.n_train == styled.ft_steps * styled.ft_batch  # every image seen once
    assert styled.pretrain_hash() == demo.pretrain_hash() and shipped_base(styled) is not None  # no pretraining
    assert styled.hash() != demo.hash()
    assert build_command("styled") == "python -m core zoo build"  # the default zoo
    assert build_command("demo") == "python -m core zoo build --zoo demo"


def test_the_styled_zoo_is_the_default_everywhere():
    """`make run` (Makefile's ZOO), the CLI, a spec without a model set and the Models page open one zoo."""
    import re
    from pathlib import Path

    from core.cli.options import DEFAULT_ZOO
    from core.spec import ModelSetRef, RunConfig
    from core.zoo import cli as zoo_cli
    from core.zoo.build import build_zoo, load_model_set, zoo_path

    assert DEFAULT_ZOO == "styled" and DEFAULT_ZOO in R.RECIPES
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    # the whole value: an inline comment would leave trailing spaces in $(ZOO) and the app would open nothing
    assert re.search(r"^ZOO \?=(.*)$", makefile, re.M).group(1) == " " + DEFAULT_ZOO
    assert ModelSetRef().zoo == DEFAULT_ZOO and RunConfig.from_dict({}).model_set.zoo == DEFAULT_ZOO
    assert zoo_cli._kind(zoo_cli.parser().parse_args(["build"])) == DEFAULT_ZOO
    for f in (build_zoo, load_model_set, zoo_path):
        assert f.__defaults__[0] == DEFAULT_ZOO, f


def test_ft_seed_varies_the_fine_tunes_over_the_same_base_and_keeps_old_hashes_at_zero():
    for kind in R.RECIPES:
        r = R.RECIPES[kind]
        assert r.ft_seed == 0 and r.finetune_seed == r.seed
        assert R.recipe_for(kind, {"ft_seed": "0"}).hash() == r.hash()  # builds made before the field stay valid
        s1 = R.recipe_for(kind, {"ft_seed": "1"})
        assert s1.finetune_seed == r.seed + 1
        assert s1.hash() != r.hash() and s1.pretrain_hash() == r.pretrain_hash()  # same (shipped) base
    assert R.RECIPES["styled"].hash() == "6b08faf2002824b2"  # the styled zoo's documented hash is unchanged
    with pytest.raises(ValueError, match="ft_seed must be >= 0"):
        R.recipe_for("micro", {"ft_seed": "-1"})
