import pytest

from core.layers import (
    block_parts,
    default_tower,
    in_tower,
    is_output_param,
    layer_index,
    num_blocks,
    param_kind,
    select_tower,
    tower_depths,
    tower_of,
    towers,
)
from tests.fixtures import full_clip


@pytest.mark.parametrize(
    "name, idx",
    [
        ("visual.transformer.resblocks.0.attn.in_proj_weight", 0),
        ("visual.transformer.resblocks.11.mlp.c_fc.bias", 11),
        ("transformer.resblocks.3.ln_1.weight", 3),
        ("vision_model.encoder.layers.7.self_attn.q_proj.weight", 7),
        ("blocks.5.mlp.fc1.weight", 5),
        ("transformer.h.2.attn.c_attn.weight", 2),
        ("model.layers.30.self_attn.o_proj.weight", 30),
        ("encoder.block.4.layer.0.SelfAttention.q.weight", 4),
        ("roberta.encoder.layer.9.attention.self.query.weight", 9),
        ("vit.encoder.layer.2.intermediate.dense.bias", 2),
    ],
)
def test_layer_index_finds_each_architectures_container(name, idx):
    assert layer_index(name) == idx


@pytest.mark.parametrize(
    "name",
    [
        "visual.conv1.weight",
        "visual.class_embedding",
        "visual.ln_post.weight",
        "visual.proj",
        "visual.attnpool.heads.3.weight",  # a numbered key that is not a block: a bare ".3." match would mis-assign it
        "token_embedding.weight",
    ],
)
def test_parameters_outside_blocks_have_no_index(name):
    assert layer_index(name) is None


def test_layer_index_rejects_block_beyond_num_blocks():
    with pytest.raises(ValueError, match="block 12"):
        layer_index("visual.transformer.resblocks.12.ln_1.weight", num_blocks=12)


def test_num_blocks_counts_one_tower_with_prefix():
    keys = [f"visual.transformer.resblocks.{i}.ln_1.weight" for i in range(6)] + [
        f"transformer.resblocks.{i}.ln_1.weight" for i in range(12)
    ]
    assert num_blocks(keys, prefix="visual.") == 6
    assert num_blocks(keys) == 12


def test_output_params_and_kinds():
    assert is_output_param("visual.ln_post.weight") and is_output_param("visual.proj")
    assert not is_output_param("visual.transformer.resblocks.0.attn.out_proj.weight")
    assert param_kind("visual.transformer.resblocks.0.attn.in_proj_weight") == "attention"
    assert param_kind("visual.transformer.resblocks.0.mlp.c_fc.weight") == "mlp"
    assert param_kind("visual.transformer.resblocks.0.ln_1.weight") == "norm"
    assert param_kind("visual.conv1.weight") == "embedding"


# ------------------------------------------------------------------ towers: full CLIP state dicts
open_clip_full, hf_clip_full = full_clip.open_clip_full, full_clip.hf_clip_full
VISION_LAYERS, TEXT_LAYERS = full_clip.VISION_LAYERS, full_clip.TEXT_LAYERS


def test_tower_of_open_clip_full_checkpoint():
    sd = open_clip_full()
    tags = {k: tower_of(k) for k in sd}
    assert {k for k, t in tags.items() if t == "visual"} == {k for k in sd if k.startswith("visual.")}
    text = {k for k, t in tags.items() if t == "text"}
    assert "token_embedding.weight" in text and "positional_embedding" in text and "text_projection" in text
    assert "ln_final.weight" in text and "transformer.resblocks.1.mlp.c_fc.weight" in text
    assert text | {k for k in sd if k.startswith("visual.")} | {"logit_scale"} == set(sd)
    assert tags["logit_scale"] is None
    assert towers(sd) == ("visual", "text")


def test_block_counts_per_tower_open_clip():
    sd = open_clip_full()
    assert num_blocks(sd, tower="visual") == VISION_LAYERS
    assert num_blocks(sd, tower="text") == TEXT_LAYERS
    assert tower_depths(sd) == {"visual": VISION_LAYERS, "text": TEXT_LAYERS}
    assert num_blocks(sd) == max(VISION_LAYERS, TEXT_LAYERS)  # no tower: every name counts (as before)
    assert num_blocks(sd, prefix="visual.") == VISION_LAYERS
    # depth within the parameter's own tower
    assert layer_index("transformer.resblocks.1.attn.in_proj_weight", num_blocks=TEXT_LAYERS) == 1
    with pytest.raises(ValueError, match="block 2"):
        layer_index("transformer.resblocks.2.attn.in_proj_weight", num_blocks=TEXT_LAYERS)


def test_block_counts_per_tower_hf_clip_raw_and_through_core_name_map():
    from core.checkpoints import from_hf_names

    raw = hf_clip_full()
    assert tower_of("vision_model.encoder.layers.3.mlp.fc1.weight") == "visual"
    assert tower_of("text_model.encoder.layers.1.mlp.fc1.weight") == "text"
    assert tower_of("visual_projection.weight") == "visual" and tower_of("text_projection.weight") == "text"
    assert tower_of("logit_scale") is None
    assert tower_depths(raw) == {"visual": VISION_LAYERS, "text": TEXT_LAYERS}
    # core.checkpoints loads HF names as open_clip names: those are what the layer map sees
    mapped = from_hf_names(raw)
    assert set(mapped) == set(open_clip_full())
    assert tower_depths(mapped) == {"visual": VISION_LAYERS, "text": TEXT_LAYERS}
    for tower in ("visual", "text"):
        assert len(in_tower(mapped, tower)) == len(in_tower(open_clip_full(), tower))


def test_no_text_parameter_in_visual_blocks():
    sd = open_clip_full()
    visual = select_tower(sd, "visual")
    assert visual and all(k.startswith("visual.") for k in visual)
    text = select_tower(sd, "text")
    assert all(not k.startswith("visual.") and k != "logit_scale" for k in text)
    assert {layer_index(k) for k in text} - {None} == set(range(TEXT_LAYERS))


def test_select_tower_defaults_and_errors():
    sd = open_clip_full()
    visual_only = {k: v for k, v in sd.items() if k.startswith("visual.")}
    assert select_tower(sd) == select_tower(sd, "visual")
    with pytest.raises(ValueError, match="no text tower"):
        select_tower(visual_only, "text")
    with pytest.raises(ValueError, match="tower must be one of"):
        select_tower(sd, "audio")
    # a single unnamed stack is the default ("visual") tower
    timm = ["patch_embed.proj.weight", "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc1.weight", "norm.weight"]
    assert towers(timm) == () and select_tower(timm, "visual") == timm and num_blocks(timm, tower="visual") == 2
    with pytest.raises(ValueError, match="no text tower"):
        select_tower(timm, "text")
    # names of no tower go with a one-tower model's tower, with neither tower of a two-tower model
    assert select_tower(["visual.proj", "logit_scale"], "visual") == ["visual.proj", "logit_scale"]
    assert "logit_scale" not in select_tower(sd, "visual") + select_tower(sd, "text")
    # a text-only model: its tower is the default
    text_only = [k for k in sd if tower_of(k) == "text"]
    assert default_tower(text_only) == "text" and select_tower(text_only) == text_only


def test_block_parts_and_text_output_params():
    assert block_parts("visual.transformer.resblocks.3.attn.in_proj_weight[q]") == (
        "visual.transformer.resblocks.",
        3,
        "attn.in_proj_weight[q]",
    )
    assert block_parts("text_model.encoder.layers.1.mlp.fc1.weight")[1:] == (1, "mlp.fc1.weight")
    assert block_parts("visual.ln_post.weight") is None
    assert is_output_param("ln_final.weight") and is_output_param("text_projection")
    assert not is_output_param("token_embedding.weight") and not is_output_param("positional_embedding")
