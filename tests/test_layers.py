import pytest

from core.layers import is_output_param, layer_index, num_blocks, param_kind


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
