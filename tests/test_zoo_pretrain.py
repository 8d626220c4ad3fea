import numpy as np
import pytest
import torch

from core.zoo import pretrain as P
from core.zoo import scenes as S
from core.zoo.recipe import recipe_for


def test_pretraining_batches_are_deterministic_minimal_pairs_with_captions():
    a = P.pretrain_batch(np.random.default_rng(5), 16, 0.5)
    b = P.pretrain_batch(np.random.default_rng(5), 16, 0.5)
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
    assert P.caption(scene, {"direction", "position"}) == "a arrow pointing left in the top right"
    assert P.caption(scene, {"colour"}, "a photo of ") == "a photo of a red arrow"
    group = {"kind": "group", "attrs": {"count": 2, "shape": 0, "colour": 1}}
    assert P.caption(group, {"count", "shape"}) == "three circles"
    assert S.COUNTS[2] == "three"
    with pytest.raises(ValueError, match="unknown scene kind"):
        P.caption({"kind": "cloud", "attrs": {"colour": 0}}, set())


def test_caption_mention_rate_follows_the_recipe():
    few = P.pretrain_batch(np.random.default_rng(1), 64, 0.0, mention_prob=0.1)[3]
    many = P.pretrain_batch(np.random.default_rng(1), 64, 0.0, mention_prob=0.9)[3]
    assert sum(map(len, few)) < sum(map(len, many))
    r = recipe_for("demo", {"mention_prob": "0.25"})
    assert r.pretrain_hash() != recipe_for("demo").pretrain_hash()  # a base made with other captions is not reused


def test_pretraining_runs_through_the_train_loop_deterministically_and_clamps_the_logit_scale():
    r = recipe_for("micro", {"pretrain_steps": "3", "pretrain_batch": "8", "lr_text": "3", "warmup": "0"})
    seen = []
    a, stats = P.pretrain(r, progress=lambda stage, done, total: seen.append((stage, done, total)))
    b, _ = P.pretrain(r)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert float(a["logit_scale"]) == 0.0  # a huge text lr drives it below 0; the after_step hook clamps it
    assert seen == [("pretrain", 3, 3)] and np.isfinite(stats["loss_first_50"])


def test_pretraining_can_be_cancelled():
    import threading

    from core.errors import Cancelled

    ev = threading.Event()
    ev.set()
    with pytest.raises(Cancelled, match="after 0 of 3 steps"):
        P.pretrain(recipe_for("micro", {"pretrain_steps": "3", "pretrain_batch": "8"}), cancel=ev)
