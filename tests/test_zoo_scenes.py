import numpy as np
import pytest

from core.zoo import scenes as S


def test_digit_source_images_are_split_disjointly():
    idx = {s: set(np.concatenate(list(S.digit_indices(s).values())).tolist()) for s in S.SPLITS}
    assert not idx["train"] & idx["val"] and not idx["train"] & idx["test"] and not idx["val"] & idx["test"]
    with pytest.raises(ValueError, match="split must be one of"):
        S.digit_indices("dev")


def test_minimal_pair_changes_only_the_named_attribute():
    rng = np.random.default_rng(3)
    state = rng.bit_generator.state
    a = S.make_scene(rng, "train", "arrow", direction=0, colour=2, position=1)
    rng.bit_generator.state = state
    b = S.make_scene(rng, "train", "arrow", direction=4, colour=2, position=1)
    assert a["attrs"]["direction"] == 0 and b["attrs"]["direction"] == 4
    assert {k: v for k, v in a["attrs"].items() if k != "direction"} == {
        k: v for k, v in b["attrs"].items() if k != "direction"
    }
    assert a["noise_seed"] == b["noise_seed"] and a["bg"] == b["bg"]
    assert (S.render(a) != S.render(b)).any()


def test_render_is_deterministic_in_the_scene():
    scene = S.make_scene(np.random.default_rng(0), "val", "shape", shape=2)
    img = S.render(scene)
    assert img.dtype == np.uint8 and img.shape == (S.IMAGE_SIZE, S.IMAGE_SIZE, 3)
    assert (img == S.render(scene)).all() and scene["attrs"]["shape"] == 2
