import json

import numpy as np

from core import data as D
from core import zoo


def test_micro_zoo_finetuned_models_beat_zero_shot_on_their_tasks(micro_zoo):
    man = json.loads((micro_zoo.zoo_dir / "manifest.json").read_text())
    acc = man["accuracy"]["test"]
    for t in man["tasks"]:
        assert acc["finetuned"][t] > acc["zero_shot"][t], (t, acc["finetuned"][t], acc["zero_shot"][t])


def test_micro_zoo_layout_and_manifest(micro_zoo, micro_zoo_dir):
    assert micro_zoo.tasks == list(zoo.RECIPES["micro"].tasks) == micro_zoo.eval_tasks
    base, ft = micro_zoo.base(), micro_zoo.finetuned(micro_zoo.tasks[0])
    assert "token_embedding.weight" in base and all(k.startswith("visual.") for k in ft)
    assert set(ft) == {k for k in base if k.startswith("visual.")}
    man = json.loads((micro_zoo_dir / "manifest.json").read_text())
    for key in ("recipe", "recipe_hash", "seeds", "timings_seconds", "versions", "head_max_cosine"):
        assert key in man
    for split in ("val", "test"):
        a = man["accuracy"][split]
        assert set(a["zero_shot"]) == set(a["finetuned"]) == set(man["tasks"])
        assert "mean_forgetting" in a and all("control_normalized" in c for c in a["control"].values())
    assert zoo.is_built("micro", cache=micro_zoo_dir.parent)
    assert not zoo.is_built("demo", cache=micro_zoo_dir.parent)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path))
    assert zoo.cache_dir() == tmp_path


def test_pretraining_batches_are_deterministic_minimal_pairs_with_captions():
    a = zoo.pretrain_batch(np.random.default_rng(5), 16, 0.5)
    b = zoo.pretrain_batch(np.random.default_rng(5), 16, 0.5)
    assert (a[0] == b[0]).all() and a[1] == b[1]
    images, captions, scenes, _ = a
    for i in range(0, 8, 2):  # pairs: same kind, exactly one attribute differs, both captions name it
        s1, s2 = scenes[i], scenes[i + 1]
        diff = [k for k in s1["attrs"] if s1["attrs"][k] != s2["attrs"].get(k)]
        assert s1["kind"] == s2["kind"] and len(diff) <= 1
        if diff:
            assert captions[i] != captions[i + 1]


def test_captions_name_the_mentioned_attributes():
    scene = {"kind": "arrow", "attrs": {"direction": 4, "colour": 0, "position": 2}}
    assert zoo.caption(scene, {"direction", "position"}) == "a arrow pointing left in the top right"
    assert zoo.caption(scene, {"colour"}, "a photo of ") == "a photo of a red arrow"
    group = {"kind": "group", "attrs": {"count": 2, "shape": 0, "colour": 1}}
    assert zoo.caption(group, {"count", "shape"}) == "three circles"
    assert D.COUNTS[2] == "three"


def test_recipe_overrides_are_typed_and_checked():
    r = zoo.recipe_for("micro", {"ft_steps": "7", "ft_lr": "0.01"})
    assert r.ft_steps == 7 and r.ft_lr == 0.01 and r.hash() != zoo.RECIPES["micro"].hash()
    try:
        zoo.recipe_for("micro", {"nope": "1"})
    except ValueError as e:
        assert "nope" in str(e)
    else:
        raise AssertionError("unknown field accepted")


def test_recipe_hash_follows_the_image_generator(monkeypatch):
    r = zoo.RECIPES["demo"]
    h, ph = r.hash(), r.pretrain_hash()
    monkeypatch.setattr(D, "MAIN_OBJECT_SIZE", (12.0, 15.0))
    assert r.hash() != h and r.pretrain_hash() != ph  # an older generator's zoo or base is never reused


def test_shipped_base_matches_the_demo_recipe_and_its_checksum():
    # The demo build skips pretraining only with this file; a recipe change without a new
    # `python -m core zoo pretrain` would silently make every fresh clone pretrain for ~18 min.
    f = zoo.shipped_base(zoo.RECIPES["demo"])
    assert f is not None and f.stat().st_size < 25 * 2**20
    info = json.loads((f.parent / "recipe.json").read_text())
    assert info["pretrain_recipe"]["pretrain_steps"] == zoo.RECIPES["demo"].pretrain_steps
    assert info["sha256"] == zoo._sha256(f)


def test_caption_mention_rate_follows_the_recipe():
    few = zoo.pretrain_batch(np.random.default_rng(1), 64, 0.0, mention_prob=0.1)[3]
    many = zoo.pretrain_batch(np.random.default_rng(1), 64, 0.0, mention_prob=0.9)[3]
    assert sum(map(len, few)) < sum(map(len, many))
    r = zoo.recipe_for("demo", {"mention_prob": "0.25"})
    assert r.pretrain_hash() != zoo.RECIPES["demo"].pretrain_hash()  # a base made with other captions is not reused
