import hashlib

import numpy as np
import pytest
import torch

from core.zoo import data as D
from core.zoo import recipe as R
from core.zoo import scenes as S
from core.zoo import styles as ST

STYLED = list(D.STYLED_TASKS)


def _digest(x) -> str:
    return hashlib.sha256(np.ascontiguousarray(x).tobytes()).hexdigest()


def test_styled_tasks_are_registered_and_the_styled_suite_uses_them():
    assert set(STYLED) <= set(D.TASK_NAMES)
    assert set(D.STYLED_DEMO_TASKS) <= set(D.TASK_NAMES) and len(D.STYLED_DEMO_TASKS) == 8
    assert R.RECIPES["demo"].tasks == D.DEMO_TASKS and len(D.DEMO_TASKS) == 8
    # the styled suite drops the tasks the base solves zero-shot (still available), and builds with --set
    assert not {"colors", "position", "arrows"} & set(D.STYLED_DEMO_TASKS)
    assert {"colors", "position", "arrows"} <= set(D.TASK_NAMES)
    styled = R.recipe_for("demo", {"tasks": ",".join(D.STYLED_DEMO_TASKS)})
    assert styled.tasks == D.STYLED_DEMO_TASKS and styled.hash() != R.RECIPES["demo"].hash()


@pytest.mark.parametrize("name", STYLED)
def test_styled_split_is_deterministic_and_balanced(name):
    a, ya = D.generate_split(name, "val", 0, 40)
    b, yb = D.generate_split(name, "val", 0, 40)
    assert _digest(a.numpy()) == _digest(b.numpy()) and torch.equal(ya, yb)
    c = D.get_task(name).num_classes
    counts = np.bincount(ya.numpy(), minlength=c)
    assert counts.max() - counts.min() <= 1 and a.shape == (40, 3, S.IMAGE_SIZE, S.IMAGE_SIZE)


@pytest.mark.parametrize("name", STYLED)
def test_styled_splits_are_disjoint(name):
    seen: dict[str, set] = {}
    for split in S.SPLITS:
        x, _ = D.generate_split(name, split, 0, 40)
        for img in x:
            seen.setdefault(_digest(img.numpy()), set()).add(split)
    assert all(len(s) == 1 for s in seen.values())


@pytest.mark.parametrize("name", STYLED)
def test_styled_scene_answers_its_label(name):
    spec = D.get_task(name)
    rng = np.random.default_rng(3)
    for label in range(spec.num_classes):
        scene = D.sample_task_scene(name, label, rng, "test")
        assert scene["attrs"][spec.attribute] == label and scene["style"]


def test_style_only_adds_keys_pretraining_never_sets():
    """A styled scene is the plain scene of the same generator state plus style keys: remove them (and
    the background texture) and it renders exactly as the plain one; with them it renders differently."""
    for style, attrs in [("typed_digit", {"digit": 3}), ("line_arrow", {"direction": 2}), ("textured_shape", {})]:
        rng = np.random.default_rng(11)
        state = rng.bit_generator.state
        styled = S.make_styled_scene(rng, "val", style, bg_prob=1.0, **attrs)
        rng.bit_generator.state = state
        plain = S.make_scene(
            rng, "val", S.STYLE_KIND[style], **({"pattern": 0} | attrs if style == "textured_shape" else attrs)
        )
        stripped = {k: v for k, v in styled.items() if k not in ("bg_texture", "style")}
        stripped["objects"] = [
            {k: v for k, v in o.items() if k not in ("glyph", "font", "stroke", "line", "texture")}
            | ({"font": o["font"]} if "font" in o and "glyph" not in o else {})
            for o in styled["objects"]
        ]
        assert _digest(S.render(stripped)) == _digest(S.render(plain))
        assert _digest(S.render(styled)) != _digest(S.render(plain))


def test_masks_and_textures_are_in_range():
    for f in range(len(ST.NOVEL_FONT_FILES)):
        for stroke in (0, 3):
            m = ST.glyph_mask("8", f, 48, stroke)
            assert m.shape == (48, 48) and 0 <= m.min() and m.max() <= 1 and m.sum() > 20
    for i in range(len(ST.TEXTURES)):
        t = ST.texture(i, 48)
        assert set(np.unique(t)) <= {0.0, 1.0} and 0.2 < t.mean() < 0.8
    for i in range(len(ST.BG_TEXTURES)):
        bg = ST.background_texture(i, 5, 32)
        assert bg.shape == (32, 32, 1) and np.abs(bg).max() <= 1
    assert ST.line_arrow_mask(48).sum() > 0


def test_bad_style_inputs_name_the_problem():
    with pytest.raises(ValueError, match="unknown style"):
        S.make_styled_scene(np.random.default_rng(0), "val", "watercolour")
    with pytest.raises(ValueError, match="font index"):
        ST.glyph_mask("A", len(ST.NOVEL_FONT_FILES), 48)


def test_style_version_is_in_the_hash_of_styled_recipes_only(monkeypatch):
    styled = R.recipe_for("demo", {"tasks": ",".join(D.STYLED_DEMO_TASKS)})
    demo, micro = R.RECIPES["demo"], R.RECIPES["micro"]
    h, ph, mh, dh = styled.hash(), styled.pretrain_hash(), micro.hash(), demo.hash()
    monkeypatch.setattr(ST, "STYLE_VERSION", ST.STYLE_VERSION + 1)
    assert styled.hash() != h  # a zoo with the older looks is rebuilt
    assert styled.pretrain_hash() == ph and micro.hash() == mh  # the base and the micro zoo are not affected
    assert demo.hash() == dh  # nor the default demo zoo, which has no styled task
