import math

import open_clip
import pytest
import torch
import torch.nn.functional as F

from core.checkpoints import to_hf_names
from core.models import ZOO_CONFIGS, build_model, infer_arch, load_visual, tokenize, zero_shot_head


class TwoClassTextTower(torch.nn.Module):
    """A hand-made text tower: the embedding of a prompt is a fixed function of its tokens."""

    context_length = 16

    def __init__(self):
        super().__init__()
        self.logit_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))

    def encode_text(self, tokens):
        n = (tokens != 0).sum(1).float()
        return torch.stack([n, tokens[:, 1].float() % 7 + 1, torch.ones_like(n)], 1)


def test_zero_shot_head_averages_normalized_templates_then_renormalizes():
    tower = TwoClassTextTower()
    classes, templates = ["cat", "big dog"], ["a {c}.", "a photo of a {c} here."]
    head = zero_shot_head(tower, classes, templates, cache=False)
    rows = []
    for c in classes:
        e = F.normalize(tower.encode_text(tokenize(tower, [t.format(c=c) for t in templates])), dim=-1)
        rows.append(F.normalize(e.mean(0), dim=0) * 10.0)
    assert head.shape == (2, 3)
    torch.testing.assert_close(head, torch.stack(rows))
    torch.testing.assert_close(head.norm(dim=1), torch.full((2,), 10.0))


def _meta_model(name):
    with torch.device("meta"):
        return open_clip.create_model(name, pretrained=None, device="meta")


def test_infer_arch_round_trips_open_clip_vit_b_32():
    sd = _meta_model("ViT-B-32").state_dict()
    arch = infer_arch(sd)
    assert (arch["width"], arch["layers"], arch["patch_size"], arch["image_size"], arch["embed_dim"]) == (
        768,
        12,
        32,
        224,
        512,
    )
    assert arch["text"]["width"] == 512 and arch["text"]["layers"] == 12 and arch["text"]["context_length"] == 77
    with torch.device("meta"):
        rebuilt = build_model(arch=arch).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_infer_arch_reads_hf_clip_shaped_state_dicts():
    sd = _meta_model("ViT-B-32").state_dict()
    hf = to_hf_names(sd)
    assert any(k.startswith("vision_model.encoder.layers.") for k in hf)
    a, b = infer_arch(sd), infer_arch(hf)
    for k in ("width", "layers", "patch_size", "image_size", "embed_dim", "mlp_ratio"):
        assert a[k] == b[k], k
    assert b["format"] == "hf_clip" and b["text"]["width"] == 512


def test_build_model_from_hf_state_dict_and_hf_config():
    small = build_model(arch="mergescope-micro")
    hf = to_hf_names(small.state_dict())
    model = build_model(hf)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(x), small.encode_image(x))
    cfg = {"projection_dim": 64, "vision_config": {"hidden_size": 64, "num_hidden_layers": 2, "patch_size": 8, "image_size": 32,
           "intermediate_size": 128, "num_attention_heads": 2}, "text_config": {"hidden_size": 32, "num_hidden_layers": 1,
           "num_attention_heads": 1, "intermediate_size": 64, "max_position_embeddings": 16}}  # fmt: skip
    m = build_model(arch=cfg)
    assert m.visual.conv1.weight.shape == (64, 3, 8, 8) and len(m.visual.transformer.resblocks) == 2


def test_zoo_configs_infer_back_to_themselves():
    for name, cfg in ZOO_CONFIGS.items():
        arch = infer_arch(build_model(arch=name).state_dict())
        assert arch["open_clip_cfg"]["vision_cfg"]["head_width"] == cfg["vision_cfg"]["head_width"], name
        assert arch["open_clip_cfg"]["text_cfg"]["heads"] == cfg["text_cfg"]["heads"], name


def test_load_visual_copies_in_place_and_checks_shapes():
    model = build_model(arch="mergescope-micro")
    other = build_model(arch="mergescope-micro")
    ptr = model.visual.conv1.weight.data_ptr()
    text_before = model.token_embedding.weight.clone()
    load_visual(model, other.state_dict())
    assert model.visual.conv1.weight.data_ptr() == ptr
    torch.testing.assert_close(model.visual.conv1.weight, other.visual.conv1.weight)
    torch.testing.assert_close(model.token_embedding.weight, text_before)
    with pytest.raises(ValueError, match="shape"):
        load_visual(model, {"visual.conv1.weight": torch.zeros(1, 3, 8, 8)})


def test_registering_the_zoo_configs_leaves_no_folder_behind(tmp_path, monkeypatch):
    """open_clip reads the configs when their folder is added; the folder is removed at once (one per
    process used to pile up in /tmp), and open_clip still builds the zoo's architecture afterwards."""
    import tempfile

    import open_clip

    from core import models

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(models, "_registered", False)
    models.register_zoo_configs()
    assert list(tmp_path.iterdir()) == []
    open_clip.add_model_config(tmp_path)  # a later rescan by anyone keeps the zoo's configs
    assert "mergescope-zoo" in open_clip.list_models()
    assert open_clip.create_model("mergescope-micro", pretrained=None) is not None
