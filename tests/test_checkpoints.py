"""core.checkpoints: every format loads to open_clip names, saves atomically, and fails with a clear message.

All models are tiny and built here (no downloads): an open_clip CLIP from a registered
custom config, and transformers CLIP vision/full models from small configs.
"""

from __future__ import annotations

import json
import os
import random
import sys
import types
from pathlib import Path

import open_clip
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from transformers import (
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    CLIPVisionModel,
    CLIPVisionModelWithProjection,
)

from core.checkpoints import (
    CheckpointError,
    Issue,
    UnsafeCheckpointError,
    checkpoint_info,
    detect_format,
    from_hf_names,
    load_state_dict,
    save_state_dict,
    to_hf_names,
    validate_checkpoints,
)

TINY = "mergescope-checkpoints-tiny"
# open_clip side of the tiny CLIP; the HF configs below mirror it (quick_gelu, head width 16, mlp ratio 2).
TINY_OPEN_CLIP = {
    "embed_dim": 16,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 512, "width": 32, "heads": 2, "layers": 1},
}
HF_VISION = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    projection_dim=16,
    hidden_act="quick_gelu",  # open_clip's quick_gelu=True (OpenAI CLIP) activation
)
HF_TEXT = dict(
    vocab_size=512,
    hidden_size=32,
    intermediate_size=128,
    num_hidden_layers=1,
    num_attention_heads=2,
    max_position_embeddings=16,
    projection_dim=16,
    hidden_act="quick_gelu",
    eos_token_id=2,  # HF's legacy pooling (argmax of token ids), which is open_clip's
)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> open_clip.model.CLIP:
    cfg_dir = tmp_path_factory.mktemp("open_clip_cfg")
    (cfg_dir / f"{TINY}.json").write_text(json.dumps(TINY_OPEN_CLIP))
    open_clip.add_model_config(cfg_dir)
    torch.manual_seed(0)
    return open_clip.create_model(TINY).eval()


@pytest.fixture(scope="module")
def clip_sd(tiny_clip) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in tiny_clip.state_dict().items()}


def new_open_clip() -> open_clip.model.CLIP:
    return open_clip.create_model(TINY).eval()


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert set(a) == set(b)
    for k in b:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


def images(n: int = 3) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- round trips


def test_safetensors_round_trip_keeps_names_values_and_dtypes(tmp_path):
    sd = {
        "visual.conv1.weight": torch.randn(4, 3, 2, 2),
        "visual.ln_pre.weight": torch.randn(4).half(),
        "visual.proj": torch.randn(4, 2).bfloat16(),
        "counter": torch.tensor([3, 1], dtype=torch.int64),
    }
    save_state_dict(sd, tmp_path / "m.safetensors")
    assert_same(load_state_dict(tmp_path / "m.safetensors"), sd)
    assert detect_format(tmp_path / "m.safetensors") == "safetensors"


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3},
        lambda sd: {"model": sd},
        lambda sd: {"model_state_dict": sd, "optimizer": {}},
        lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},  # DDP training checkpoint
        lambda sd: {"model." + k: v for k, v in sd.items()},  # task_vectors ImageEncoder.state_dict()
        lambda sd: {"module.model." + k: v for k, v in sd.items()},
    ],
    ids=["plain", "state_dict", "model", "model_state_dict", "module_prefix", "model_prefix", "both_prefixes"],
)
@pytest.mark.parametrize("suffix", [".pt", ".pth", ".bin"])
def test_torch_checkpoints_unwrap_to_canonical_names(tmp_path, clip_sd, wrap, suffix):
    path = tmp_path / f"ft{suffix}"
    torch.save(wrap(clip_sd), path)
    assert_same(load_state_dict(path), clip_sd)


def test_legacy_non_zip_torch_file_loads(tmp_path, clip_sd):
    torch.save(clip_sd, tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    assert_same(load_state_dict(tmp_path / "old.pt"), clip_sd)


def test_open_clip_full_state_dict_round_trips_and_loads_strictly(tmp_path, tiny_clip, clip_sd):
    torch.save(clip_sd, tmp_path / "clip.pt")
    assert detect_format(tmp_path / "clip.pt") == "open_clip"
    sd = load_state_dict(tmp_path / "clip.pt")
    save_state_dict(sd, tmp_path / "clip.safetensors")
    again = load_state_dict(tmp_path / "clip.safetensors")
    assert_same(again, clip_sd)
    model = new_open_clip()
    model.load_state_dict(again, strict=True)
    with torch.no_grad():
        assert torch.equal(model.encode_image(images()), tiny_clip.encode_image(images()))


def test_keep_text_false_keeps_only_the_image_tower(tmp_path, clip_sd):
    save_state_dict(clip_sd, tmp_path / "clip.safetensors")
    sd = load_state_dict(tmp_path / "clip.safetensors", keep_text=False)
    assert sd and all(k.startswith("visual.") for k in sd)
    assert set(sd) == {k for k in clip_sd if k.startswith("visual.")}
    assert "token_embedding.weight" in load_state_dict(tmp_path / "clip.safetensors")


def test_bare_visual_tower_state_dict_gets_visual_prefix(tmp_path, tiny_clip):
    torch.save(tiny_clip.visual.state_dict(), tmp_path / "visual.pt")
    sd = load_state_dict(tmp_path / "visual.pt")
    assert set(sd) == {"visual." + k for k in tiny_clip.visual.state_dict()}
    assert detect_format(tmp_path / "visual.pt") == "open_clip_visual"


def test_content_decides_the_reader_when_the_suffix_lies(tmp_path, clip_sd):
    torch.save(clip_sd, tmp_path / "really_torch.safetensors")
    save_state_dict(clip_sd, tmp_path / "really_safetensors.pt")
    assert_same(load_state_dict(tmp_path / "really_torch.safetensors"), clip_sd)
    assert_same(load_state_dict(tmp_path / "really_safetensors.pt"), clip_sd)


# ---------------------------------------------------------------------------------------------- saving


def test_atomic_save_replaces_the_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "out" / "merged.safetensors"
    save_state_dict({"a": torch.zeros(2)}, path)
    save_state_dict({"a": torch.ones(2)}, path)
    assert os.listdir(path.parent) == ["merged.safetensors"]
    assert torch.equal(load_state_dict(path)["a"], torch.ones(2))


def test_failed_save_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "merged.safetensors"
    save_state_dict({"a": torch.zeros(2)}, path)
    with pytest.raises(TypeError, match="'b'"):
        save_state_dict({"a": torch.ones(2), "b": 3.0}, path)
    assert os.listdir(tmp_path) == ["merged.safetensors"]
    assert torch.equal(load_state_dict(path)["a"], torch.zeros(2))


@pytest.mark.parametrize("name", ["m.safetensors", "m.pt"])
def test_in_place_edits_of_loaded_tensors_never_reach_the_file(tmp_path, name):
    # Loads are memory-mapped; the mapping is copy-on-write, so merging in place is safe.
    path = tmp_path / name
    if name.endswith(".safetensors"):
        save_state_dict({"w": torch.zeros(8)}, path)
    else:
        torch.save({"w": torch.zeros(8)}, path)
    load_state_dict(path)["w"] += 1
    assert torch.equal(load_state_dict(path)["w"], torch.zeros(8))


def test_save_copies_shared_and_non_contiguous_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"w": base, "tied": base, "view": base[:, 1], "t": base.t(), "grad": torch.ones(2, requires_grad=True)}
    save_state_dict(sd, tmp_path / "s.safetensors")
    back = load_state_dict(tmp_path / "s.safetensors")
    for k, v in sd.items():
        assert torch.equal(back[k], v.detach()), k


def test_save_stores_metadata_as_strings(tmp_path):
    save_state_dict({"a": torch.zeros(1)}, tmp_path / "m.safetensors", metadata={"method": "ties", "k": 0.2})
    with safe_open(str(tmp_path / "m.safetensors"), framework="pt") as f:
        assert f.metadata() == {"format": "pt", "method": "ties", "k": "0.2"}


# ---------------------------------------------------------------------------------------------- HF CLIP


@pytest.mark.parametrize("as_directory", [True, False], ids=["directory", "file"])
def test_hf_vision_with_projection_gives_the_same_image_features_in_open_clip(tmp_path, as_directory):
    torch.manual_seed(2)
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**HF_VISION)).eval()
    hf.save_pretrained(tmp_path / "hf")
    path = tmp_path / "hf" if as_directory else tmp_path / "hf" / "model.safetensors"
    sd = load_state_dict(path)
    assert detect_format(path) == "hf_clip"
    assert sd["visual.proj"].shape == (32, 16)  # transposed from visual_projection.weight (16, 32)
    assert sd["visual.transformer.resblocks.1.attn.in_proj_weight"].shape == (96, 32)
    model = new_open_clip()
    model.visual.load_state_dict({k.removeprefix("visual."): v for k, v in sd.items()}, strict=True)
    with torch.no_grad():
        ours = model.encode_image(images())
        theirs = hf(pixel_values=images()).image_embeds
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_hf_in_proj_concatenates_q_k_v_in_that_order(tmp_path):
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**HF_VISION))
    hf.save_pretrained(tmp_path)
    sd = load_state_dict(tmp_path)
    attn = hf.vision_model.encoder.layers[0].self_attn
    q, k, v = sd["visual.transformer.resblocks.0.attn.in_proj_bias"].chunk(3)
    assert torch.equal(q, attn.q_proj.bias) and torch.equal(k, attn.k_proj.bias) and torch.equal(v, attn.v_proj.bias)


def test_hf_vision_model_bare_layout_maps_to_open_clip_names(tmp_path):
    torch.manual_seed(3)
    hf = CLIPVisionModel(CLIPVisionConfig(**HF_VISION)).eval()
    hf.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        assert "embeddings.patch_embedding.weight" in f.keys()  # transformers 5 writes no vision_model. root
    sd = load_state_dict(tmp_path)
    model = new_open_clip()
    expected = {"visual." + k for k in model.visual.state_dict()} - {"visual.proj"}
    assert set(sd) == expected
    model.visual.load_state_dict({k.removeprefix("visual."): v for k, v in sd.items()}, strict=False)
    model.visual.proj = None  # CLIPVisionModel has no projection: compare pooled, post-layernorm features
    with torch.no_grad():
        torch.testing.assert_close(model.visual(images()), hf(pixel_values=images()).pooler_output, atol=1e-4, rtol=0)


def test_hf_pytorch_model_bin_directory_loads(tmp_path):
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**HF_VISION))
    hf.save_pretrained(tmp_path / "st")
    (tmp_path / "bin").mkdir()
    (tmp_path / "st" / "config.json").rename(tmp_path / "bin" / "config.json")
    # transformers 4 also saved the position_ids buffer; it is not a weight and is dropped.
    old = dict(hf.state_dict(), **{"vision_model.embeddings.position_ids": torch.arange(17)[None]})
    torch.save(old, tmp_path / "bin" / "pytorch_model.bin")
    assert_same(load_state_dict(tmp_path / "bin"), load_state_dict(tmp_path / "st"))


def test_hf_sharded_directory_loads_every_shard(tmp_path):
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**HF_VISION))
    hf.save_pretrained(tmp_path / "one")
    hf.save_pretrained(tmp_path / "sharded", max_shard_size="30KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    assert_same(load_state_dict(tmp_path / "sharded"), load_state_dict(tmp_path / "one"))


@settings(max_examples=12, deadline=None)
@given(width=st.sampled_from([4, 8]), blocks=st.integers(1, 3), with_text=st.booleans())
def test_hf_name_map_is_its_own_inverse(width, blocks, with_text):
    sd = {k: torch.randn(shape) for k, shape in open_clip_shapes(width, blocks, with_text).items()}
    hf = to_hf_names(sd)
    assert len(hf) == len(sd) + 2 * 2 * blocks * (2 if with_text else 1)  # in_proj weight+bias -> q, k, v
    assert_same(from_hf_names(hf), sd)


def open_clip_shapes(width: int, blocks: int, with_text: bool) -> dict[str, tuple[int, ...]]:
    roots = ["visual."] + ([""] if with_text else [])  # open_clip's text tower has no root
    shapes: dict[str, tuple[int, ...]] = {
        "visual.class_embedding": (width,),
        "visual.conv1.weight": (width, 3, 2, 2),
        "visual.positional_embedding": (5, width),
        "visual.ln_pre.weight": (width,),
        "visual.ln_pre.bias": (width,),
        "visual.ln_post.weight": (width,),
        "visual.ln_post.bias": (width,),
        "visual.proj": (width, 3),
    }
    for root in roots:
        for i in range(blocks):
            b = f"{root}transformer.resblocks.{i}."
            shapes |= {b + "attn.in_proj_weight": (3 * width, width), b + "attn.in_proj_bias": (3 * width,)}
            shapes |= {b + "attn.out_proj.weight": (width, width), b + "attn.out_proj.bias": (width,)}
            shapes |= {b + "mlp.c_fc.weight": (2 * width, width), b + "mlp.c_fc.bias": (2 * width,)}
            shapes |= {b + "mlp.c_proj.weight": (width, 2 * width), b + "mlp.c_proj.bias": (width,)}
            shapes |= {b + f"{ln}.{wb}": (width,) for ln in ("ln_1", "ln_2") for wb in ("weight", "bias")}
    if with_text:
        shapes |= {"token_embedding.weight": (11, width), "positional_embedding": (6, width)}
        shapes |= {"ln_final.weight": (width,), "ln_final.bias": (width,), "text_projection": (width, 3)}
        shapes |= {"logit_scale": ()}
    return shapes


def test_hf_export_round_trips_and_loads_into_transformers(tmp_path, tiny_clip):
    visual = {k: v for k, v in tiny_clip.state_dict().items() if k.startswith("visual.")}
    save_state_dict(visual, tmp_path / "hf.safetensors", hf_names=True)
    with safe_open(str(tmp_path / "hf.safetensors"), framework="pt") as f:
        hf_sd = {k: f.get_tensor(k) for k in f.keys()}
    assert torch.equal(hf_sd["visual_projection.weight"], visual["visual.proj"].t())
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**HF_VISION)).eval()
    hf.load_state_dict(hf_sd, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(
            hf(pixel_values=images()).image_embeds, tiny_clip.encode_image(images()), atol=1e-4, rtol=0
        )
    assert_same(load_state_dict(tmp_path / "hf.safetensors"), visual)


def test_hf_full_clip_model_maps_both_towers(tmp_path):
    torch.manual_seed(4)
    cfg = CLIPConfig(text_config=CLIPTextConfig(**HF_TEXT).to_dict(), vision_config=HF_VISION, projection_dim=16)
    hf = CLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path)
    model = new_open_clip()
    model.load_state_dict(load_state_dict(tmp_path), strict=True)
    tokens = torch.zeros(2, 16, dtype=torch.long)
    tokens[0, :4] = torch.tensor([5, 9, 300, 7])  # both libraries pool at the largest token id (the EOT)
    tokens[1, :3] = torch.tensor([1, 511, 4])
    with torch.no_grad():
        out = hf(input_ids=tokens, pixel_values=images())  # CLIPModel returns L2-normalized embeddings
        torch.testing.assert_close(model.encode_image(images(), normalize=True), out.image_embeds, atol=1e-4, rtol=0)
        torch.testing.assert_close(model.encode_text(tokens, normalize=True), out.text_embeds, atol=1e-4, rtol=0)
        assert torch.allclose(model.logit_scale, hf.logit_scale)
    assert all(k.startswith("visual.") for k in load_state_dict(tmp_path, keep_text=False))
    # Full export and back is lossless.
    save_state_dict(model.state_dict(), tmp_path / "again.safetensors", hf_names=True)
    assert_same(load_state_dict(tmp_path / "again.safetensors"), model.state_dict())


def test_hf_checkpoint_with_unmappable_keys_is_refused(tmp_path):
    save_state_dict(
        {"vision_model.embeddings.class_embedding": torch.zeros(4), "vision_model.adapter.weight": torch.zeros(2)},
        tmp_path / "odd.safetensors",
    )
    with pytest.raises(CheckpointError, match=r"odd\.safetensors.*vision_model\.adapter\.weight"):
        load_state_dict(tmp_path / "odd.safetensors")


# ---------------------------------------------------------------------------------------------- summary


def test_checkpoint_info_summarizes_an_hf_directory_from_headers(tmp_path):
    hf = CLIPVisionModelWithProjection(CLIPVisionConfig(**HF_VISION))
    hf.save_pretrained(tmp_path)
    info = checkpoint_info(tmp_path)
    assert info["format"] == "hf_clip"
    assert info["num_params"] == sum(p.numel() for p in hf.parameters())
    assert info["dtypes"] == ["float32"]
    assert info["file_size"] == (tmp_path / "model.safetensors").stat().st_size
    assert info["num_blocks"] == 2
    assert (info["width"], info["patch_size"], info["image_size"]) == (32, 8, 32)
    assert info["architecture"] == "ViT (width 32, 2 blocks, patch 8, 32px)"
    assert info["has_text"] is False


def test_checkpoint_info_recognizes_vit_b_32_from_shapes(tmp_path):
    sd = {
        "visual.conv1.weight": torch.zeros(768, 3, 32, 32, dtype=torch.uint8),
        "visual.positional_embedding": torch.zeros(50, 1, dtype=torch.uint8),  # 7x7 patches + class token
        **{f"visual.transformer.resblocks.{i}.ln_1.weight": torch.zeros(1, dtype=torch.float16) for i in range(12)},
    }
    save_state_dict(sd, tmp_path / "b32.safetensors")
    info = checkpoint_info(tmp_path / "b32.safetensors")
    assert (info["architecture"], info["num_blocks"], info["image_size"]) == ("ViT-B-32", 12, 224)
    assert info["dtypes"] == ["float16", "uint8"]


def test_checkpoint_info_of_open_clip_file_counts_both_towers(tmp_path, clip_sd):
    torch.save({"state_dict": clip_sd}, tmp_path / "clip.pt")
    info = checkpoint_info(tmp_path / "clip.pt")
    assert info["format"] == "open_clip" and info["has_text"] is True
    assert info["num_params"] == sum(v.numel() for v in clip_sd.values())
    assert info["num_tensors"] == len(clip_sd) and info["num_blocks"] == 2


# ---------------------------------------------------------------------------------------------- errors


def test_missing_path_names_the_path(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.safetensors: no such file"):
        load_state_dict(tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name", ["empty.safetensors", "empty.pt"])
def test_empty_file_is_reported_as_empty(tmp_path, name):
    (tmp_path / name).write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{name}: the file is empty"):
        load_state_dict(tmp_path / name)


def test_random_bytes_with_safetensors_suffix_are_reported_corrupt(tmp_path):
    junk = random.Random(0).randbytes(4096).replace(b"{", b"x").replace(b"PK", b"xx")
    (tmp_path / "junk.safetensors").write_bytes(b"\x13" + junk)  # cannot start like a pickle either
    with pytest.raises(CheckpointError, match=r"junk\.safetensors: not a safetensors or torch checkpoint"):
        load_state_dict(tmp_path / "junk.safetensors")


def test_truncated_safetensors_is_reported_truncated(tmp_path, clip_sd):
    path = tmp_path / "cut.safetensors"
    save_state_dict(clip_sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: .*(corrupt or truncated)") as err:
        load_state_dict(path)
    assert err.value.__cause__ is not None  # the library's error is chained, not shown as the message
    path.write_bytes(data[:100])  # cut inside the header
    with pytest.raises(CheckpointError, match=r"cut\.safetensors: .*truncated"):
        load_state_dict(path)


def test_truncated_torch_file_is_reported(tmp_path, clip_sd):
    path = tmp_path / "cut.pt"
    torch.save(clip_sd, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pt: cannot read torch file"):
        load_state_dict(path)


def test_unsupported_extension_lists_the_supported_ones(tmp_path, clip_sd):
    save_state_dict(clip_sd, tmp_path / "weights.npz")
    with pytest.raises(CheckpointError, match=r"weights\.npz: unsupported file type '\.npz'.*\.safetensors"):
        load_state_dict(tmp_path / "weights.npz")


def test_checkpoint_info_refuses_a_pickled_module_like_load(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "linear.pt")
    with pytest.raises(CheckpointError, match=r"linear\.pt: .*torch\.nn\.modules\.linear\.Linear.*allow_pickle"):
        checkpoint_info(tmp_path / "linear.pt")
    assert checkpoint_info(tmp_path / "linear.pt", allow_pickle=True)["num_params"] == 6


def test_directory_without_weights_says_what_it_expected(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_state_dict(tmp_path)


def test_torch_file_holding_a_list_is_not_a_state_dict(tmp_path):
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match=r"list\.pt: holds a list, not a state dict"):
        load_state_dict(tmp_path / "list.pt")


def test_pickled_module_is_refused_by_default_and_loads_with_opt_in(tmp_path, tiny_clip, clip_sd):
    path = tmp_path / "whole_model.pt"
    torch.save(tiny_clip, path)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_state_dict(path)
    message = str(err.value)
    assert "whole_model.pt" in message and "arbitrary code" in message and "allow_pickle=True" in message
    assert "open_clip.model.CLIP" in message  # what the file would have made us import
    assert detect_format(path) == "pickled_module"
    assert_same(load_state_dict(path, allow_pickle=True), clip_sd)


def test_pickled_task_vectors_image_encoder_loads_without_its_source(tmp_path, tiny_clip, clip_sd):
    # task_vectors saves torch.save(ImageEncoder) whose class lives in its repo (src.modeling), not importable here.
    module = types.ModuleType("absent_project_modeling")

    class ImageEncoder(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

    ImageEncoder.__module__, ImageEncoder.__qualname__ = module.__name__, "ImageEncoder"
    module.ImageEncoder = ImageEncoder
    sys.modules[module.__name__] = module
    try:
        torch.save(ImageEncoder(tiny_clip), tmp_path / "finetuned.pt")
    finally:
        del sys.modules[module.__name__]
    assert_same(load_state_dict(tmp_path / "finetuned.pt", allow_pickle=True), clip_sd)


def test_torchscript_archive_is_refused_by_default_and_loads_with_opt_in(tmp_path):
    # OpenAI's original CLIP checkpoints are TorchScript archives with a few integer hyperparameters.
    class OpenAIStyle(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Module()
            self.visual.conv1 = torch.nn.Conv2d(3, 4, 2, bias=False)
            self.register_buffer("input_resolution", torch.tensor(32))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.visual.conv1(x)

    module = OpenAIStyle()
    torch.jit.script(module).save(str(tmp_path / "ViT-tiny.pt"))
    with pytest.raises(CheckpointError, match=r"ViT-tiny\.pt: .*TorchScript.*allow_pickle=True"):
        load_state_dict(tmp_path / "ViT-tiny.pt")
    assert detect_format(tmp_path / "ViT-tiny.pt") == "torchscript"
    sd = load_state_dict(tmp_path / "ViT-tiny.pt", allow_pickle=True)
    assert list(sd) == ["visual.conv1.weight"]  # input_resolution is metadata, dropped
    assert torch.equal(sd["visual.conv1.weight"], module.visual.conv1.weight)


# ---------------------------------------------------------------------------------------------- validation


@pytest.fixture
def base() -> dict[str, torch.Tensor]:
    return {
        "visual.conv1.weight": torch.zeros(4, 3, 2, 2),
        "visual.proj": torch.zeros(4, 2),
        "token_embedding.weight": torch.zeros(10, 4),
    }


def only(issues: list[Issue]) -> Issue:
    assert len(issues) == 1, issues
    return issues[0]


def test_consistent_checkpoints_have_no_issues(base):
    assert validate_checkpoints(base, {"mnist": {k: v + 1 for k, v in base.items()}}) == []


def test_visual_only_fine_tune_of_a_full_clip_base_is_fine(base):
    ft = {k: v for k, v in base.items() if k.startswith("visual.")}
    assert validate_checkpoints(base, {"mnist": ft}) == []


def test_missing_key_is_an_error_naming_file_and_key(base):
    ft = {k: v for k, v in base.items() if k != "visual.proj"}
    issue = only(validate_checkpoints(base, {"mnist": ft}, paths={"mnist": "/ckpt/mnist.safetensors"}))
    assert (issue.level, issue.file, issue.key) == ("error", "/ckpt/mnist.safetensors", "visual.proj")
    assert "/ckpt/mnist.safetensors" in issue.message and "'visual.proj' is missing" in issue.message
    assert "(shape (4, 2), float32)" in issue.message


def test_extra_float_key_is_an_error_and_extra_buffer_a_warning(base):
    ft = dict(base, **{"visual.extra.weight": torch.zeros(3), "visual.steps": torch.tensor(5)})
    issues = {i.key: i for i in validate_checkpoints(base, {"svhn": ft}, paths={"svhn": "svhn.pt"})}
    assert issues["visual.extra.weight"].level == "error" and issues["visual.steps"].level == "warning"
    assert "svhn.pt" in issues["visual.extra.weight"].message
    assert "'visual.extra.weight' is not in the base" in issues["visual.extra.weight"].message


def test_shape_mismatch_says_what_was_expected(base):
    ft = dict(base, **{"visual.proj": torch.zeros(4, 3)})
    issue = only(validate_checkpoints(base, {"dtd": ft}, paths={"dtd": "dtd.safetensors"}))
    assert (issue.level, issue.key) == ("error", "visual.proj")
    assert "dtd.safetensors" in issue.message and "shape (4, 3), expected (4, 2)" in issue.message


def test_dtype_mismatch_is_a_warning_between_floats_and_an_error_otherwise(base):
    half = only(validate_checkpoints(base, {"a": dict(base, **{"visual.proj": torch.zeros(4, 2).half()})}))
    assert (half.level, half.file, half.key) == ("warning", "a", "visual.proj")
    assert "dtype float16, expected float32" in half.message and half.message.startswith("a: ")
    ints = only(validate_checkpoints(base, {"b": dict(base, **{"visual.proj": torch.zeros(4, 2, dtype=torch.int8)})}))
    assert ints.level == "error" and "dtype int8, expected float32" in ints.message


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_non_finite_values_are_errors_with_a_count(base, bad, word):
    proj = torch.zeros(4, 2)
    proj[0, :] = bad
    issue = only(validate_checkpoints(base, {"gtsrb": dict(base, **{"visual.proj": proj})}, paths={"gtsrb": "g.pt"}))
    assert (issue.level, issue.file, issue.key) == ("error", "g.pt", "visual.proj")
    assert f"contains 2 {word} value(s) out of 8" in issue.message and "g.pt" in issue.message


def test_non_finite_base_is_reported_under_the_base_path(base):
    broken = dict(base, **{"visual.proj": torch.full((4, 2), float("nan"))})
    issue = only(validate_checkpoints(broken, {}, paths={"base": "zoo/base.safetensors"}))
    assert issue.file == "zoo/base.safetensors" and "visual.proj" in issue.message


def test_validate_checkpoints_on_loaded_files(tmp_path, clip_sd):
    base_path, ft_path = tmp_path / "base.safetensors", tmp_path / "cars.pt"
    save_state_dict(clip_sd, base_path)
    ft = {k: v for k, v in clip_sd.items() if k.startswith("visual.") and k != "visual.ln_post.bias"}
    torch.save({"state_dict": ft}, ft_path)
    issues = validate_checkpoints(
        load_state_dict(base_path), {"cars": load_state_dict(ft_path)}, paths={"cars": str(ft_path)}
    )
    assert [(i.level, i.key) for i in issues] == [("error", "visual.ln_post.bias")]
    assert str(ft_path) in issues[0].message


def test_issue_str_is_the_level_and_the_message():
    assert str(Issue("error", "f.pt", "k", "f.pt: key 'k' is missing")) == "error: f.pt: key 'k' is missing"


def test_paths_are_accepted_as_strings_and_path_objects(tmp_path):
    save_state_dict({"a": torch.zeros(1)}, str(tmp_path / "s.safetensors"))
    assert list(load_state_dict(str(tmp_path / "s.safetensors"))) == ["a"]
    assert list(load_state_dict(Path(tmp_path) / "s.safetensors")) == ["a"]


def test_open_state_dict_streams_canonical_safetensors(tmp_path):
    from core.checkpoints import LazyStateDict, open_state_dict

    sd = {
        "visual.conv1.weight": torch.randn(4, 3, 2, 2),
        "visual.ln_post.bias": torch.randn(4),
        "visual.step": torch.tensor(3),
    }
    p = tmp_path / "m.safetensors"
    save_state_dict(sd, p)
    lazy = open_state_dict(p)
    assert isinstance(lazy, LazyStateDict)
    assert set(lazy) == set(sd) and len(lazy) == 3
    for k, v in sd.items():
        assert torch.equal(lazy[k], v) and lazy[k].dtype == v.dtype
    lazy["visual.conv1.weight"].add_(1.0)  # a fresh buffer per read: the file is untouched
    assert torch.equal(lazy["visual.conv1.weight"], sd["visual.conv1.weight"])
    with pytest.raises(KeyError):
        lazy["nope"]


def test_prefetch_advises_the_kernel_of_exactly_the_tensors_bytes(tmp_path, monkeypatch):
    """LazyStateDict.prefetch asks the OS (posix_fadvise WILLNEED) for the tensor's byte range in the file,
    where pread would read it, in PREFETCH_STEP pieces (Linux reads one readahead window per advice); a
    refused advice or an unknown key is no error."""
    from core.checkpoints import formats, open_state_dict

    sd = {"visual.conv1.weight": torch.randn(4, 3, 2, 2), "visual.ln_post.bias": torch.randn(4)}
    p = tmp_path / "m.safetensors"
    save_state_dict(sd, p)
    lazy = open_state_dict(p)
    advised, preads = [], []
    real_pread = os.preadv
    monkeypatch.setattr(formats.os, "posix_fadvise", lambda fd, off, n, how: advised.append((off, n, how)))
    monkeypatch.setattr(
        formats.os, "preadv", lambda fd, bufs, off: preads.append((off, len(bufs[0]))) or real_pread(fd, bufs, off)
    )
    monkeypatch.setattr(formats, "PREFETCH_STEP", 40)  # advised in 40-byte pieces (tensors of 192 and 16 bytes)
    for k in sd:
        advised.clear()
        lazy.prefetch(k)
        assert torch.equal(lazy[k], sd[k])
        off, n = preads[-1]
        want = [(o, min(40, off + n - o)) for o in range(off, off + n, 40)]
        assert [(o, m) for o, m, _ in advised] == want and {h for *_, h in advised} == {os.POSIX_FADV_WILLNEED}
    lazy.prefetch("nope")

    def refuse(*args):
        raise OSError("advice refused")

    monkeypatch.setattr(formats.os, "posix_fadvise", refuse)
    lazy.prefetch("visual.ln_post.bias")


def test_open_state_dict_falls_back_for_other_layouts(tmp_path):
    from core.checkpoints import LazyStateDict, open_state_dict

    p = tmp_path / "m.safetensors"
    save_state_dict({"module.visual.conv1.weight": torch.ones(2, 2)}, p)
    sd = open_state_dict(p)
    assert not isinstance(sd, LazyStateDict) and "visual.conv1.weight" in sd
