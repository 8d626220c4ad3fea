import json

import numpy as np
import open_clip
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import core.evaluate as E
from core.checkpoints import save_state_dict
from core.datasets.sources import subsample_indices
from core.errors import Cancelled
from core.evaluate import Evaluator
from core.models import build_model, preprocess, zero_shot_head
from core.modelset import ModelSet
from core.zoo import data as D


def test_accuracy_equals_a_slow_reference_loop(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    task = micro_zoo.tasks[0]
    ft = micro_zoo.finetuned(task)
    fast = ev.accuracy(ft)
    # reference: a fresh model with the fine-tuned visual tower, one image at a time
    model = build_model({**micro_zoo.base(), **ft})
    for name in micro_zoo.eval_tasks:
        spec = D.get_task(name)
        head = zero_shot_head(model, spec.classnames, spec.templates, cache=False)
        x, y = D.load_split(name, "test")
        idx = subsample_indices(len(y), 40, 0)
        correct = 0
        with torch.no_grad():
            for i in idx:
                f = F.normalize(model.encode_image(preprocess(x[i : i + 1])), dim=-1)
                correct += int((f @ head.T).argmax() == y[i])
        assert fast[name] == pytest.approx(correct / len(idx), abs=1e-6), name


def test_base_is_zero_shot_and_state_is_restored_between_calls(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    zs = ev.accuracy()
    ev.accuracy(micro_zoo.finetuned(micro_zoo.tasks[0]))
    assert ev.accuracy() == zs
    assert ev.accuracy(micro_zoo.base()) == zs  # full CLIP state dict works too
    partial = {k: v for k, v in micro_zoo.finetuned(micro_zoo.tasks[1]).items() if "resblocks.0." in k}
    assert set(ev.accuracy(partial)) == set(micro_zoo.eval_tasks)


def test_evaluator_is_cached_and_subsample_is_seeded(micro_zoo):
    a = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    assert Evaluator.for_model_set(micro_zoo, "test", subsample=40).model is a.model  # one cached model
    assert len(a.tasks[micro_zoo.tasks[0]].labels) == 40
    assert subsample_indices(100, 10, 1).tolist() == subsample_indices(100, 10, 1).tolist()
    assert subsample_indices(100, 10, 1).tolist() != subsample_indices(100, 10, 2).tolist()


def test_bf16_autocast_stays_close(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    fp32 = ev.accuracy(micro_zoo.finetuned(micro_zoo.tasks[0]))
    ev.bf16 = True
    try:
        bf16 = ev.accuracy(micro_zoo.finetuned(micro_zoo.tasks[0]))
    finally:
        ev.bf16 = False
    assert all(abs(fp32[t] - bf16[t]) <= 0.1 for t in fp32)


def test_sessions_keep_their_own_bf16_and_subsample(micro_zoo):
    """Two browser sessions share the cached evaluator; one's bf16 toggle must not change the other's numbers."""
    ft = micro_zoo.finetuned(micro_zoo.tasks[0])
    a = Evaluator.for_model_set(micro_zoo, "test", subsample=40, bf16=False)
    fp32 = a.accuracy(ft)
    b = Evaluator.for_model_set(micro_zoo, "test", subsample=40, bf16=True)
    assert b.bf16 and not a.bf16 and b.model is a.model
    c = Evaluator.for_model_set(micro_zoo, "test", subsample=20, bf16=False)
    assert len(c.tasks[micro_zoo.tasks[0]].labels) == 20 and len(a.tasks[micro_zoo.tasks[0]].labels) == 40
    b.accuracy(ft)
    c.accuracy(micro_zoo.finetuned(micro_zoo.tasks[1]))
    assert a.accuracy(ft) == fp32  # bitwise: still fp32 on 40 images after the others ran
    assert not Evaluator.for_model_set(micro_zoo, "test", subsample=40).bf16


# --------------------------------------------------------------------------- real architectures, user data


@pytest.fixture
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv("MERGESCOPE_CACHE", str(tmp_path / "cache"))


def image_folder(root, classes, n, sizes=((40, 30), (27, 41)), split="test"):
    """Generated PNG and JPEG images of varying sizes: class c is tinted towards colour c."""
    rng = np.random.default_rng(0)
    for ci, c in enumerate(classes):
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = sizes[i % len(sizes)]
            a = rng.integers(0, 120, (h, w, 3)).astype(np.uint8)
            a[..., ci % 3] += 120
            fmt = ("PNG", "JPEG")[i % 2]
            Image.fromarray(a).save(d / f"{i}.{fmt.lower()}", format=fmt)
    return root


def test_open_clip_vit_b_32_at_224_on_an_image_folder_equals_the_plain_loop(tmp_path, cache_in_tmp):
    torch.manual_seed(0)
    ref = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    save_state_dict(ref.state_dict(), tmp_path / "base.safetensors")
    image_folder(tmp_path / "data", ["red_fox", "green frog"], 3, sizes=((300, 260), (224, 190)))
    doc = {"base": "base.safetensors", "arch": "ViT-B-32", "tasks": {"mine": {"data": "data"}}}
    (tmp_path / "modelset.json").write_text(json.dumps(doc))
    ms = ModelSet.from_json(tmp_path / "modelset.json")
    ev = Evaluator.for_model_set(ms, "test")
    assert ev.tasks["mine"].pixels.shape == (6, 3, 224, 224) and ev.tasks["mine"].pixels.dtype == torch.uint8
    # the loop a user would write: torchvision ImageFolder + open_clip's preprocess + the model
    from torchvision.datasets import ImageFolder

    pre = open_clip.image_transform(224, is_train=False)
    data = ImageFolder(str(tmp_path / "data" / "test"), transform=pre)
    head = zero_shot_head(ref, ["green frog", "red fox"], ["a photo of a {c}.", "a photo of the {c}.", "a {c}."])
    x = torch.stack([data[i][0] for i in range(len(data))])
    with torch.no_grad():
        want = F.normalize(ref.encode_image(x), dim=-1) @ head.T
    got = ev.logits()["mine"]
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert ev.tasks["mine"].labels.tolist() == [y for _, y in data.samples]
    assert ev.num_images() == {"mine": 6}


def test_tiny_hf_clip_checkpoint_end_to_end_matches_transformers(tmp_path, cache_in_tmp):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_attention_heads": 2,
            "num_hidden_layers": 2,
            "max_position_embeddings": 16,
            "vocab_size": 49408,
        },
        vision_config={
            "hidden_size": 48,
            "intermediate_size": 96,
            "num_attention_heads": 3,
            "num_hidden_layers": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        projection_dim=24,
    )
    hf = CLIPModel(cfg).eval()
    hf.save_pretrained(tmp_path / "hf")
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    proc = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=mean, image_std=std
    )
    proc.save_pretrained(tmp_path / "hf")
    image_folder(tmp_path / "digits", ["zero", "one", "two"], 4, sizes=((32, 32),))
    doc = {"base": "hf", "tasks": {"digits": {"data": "digits", "templates": ["a photo of {c}."]}}}
    (tmp_path / "modelset.json").write_text(json.dumps(doc))
    ev = Evaluator.for_model_set(ModelSet.from_json(tmp_path / "modelset.json"), "test")
    got = ev.logits()["digits"]
    files = sorted((tmp_path / "digits" / "test").glob("*/*"))
    pix = proc(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    classes = ["one", "two", "zero"]  # sorted folders
    tokens = open_clip.tokenize([f"a photo of {c}." for c in classes], context_length=16)  # CLIP's BPE ids
    with torch.no_grad():  # transformers 5 returns model outputs whose pooler_output is the projected feature
        img = F.normalize(hf.get_image_features(pixel_values=pix).pooler_output, dim=-1)
        txt = hf.get_text_features(input_ids=tokens, attention_mask=(tokens != 0).long()).pooler_output
        want = img @ F.normalize(txt, dim=-1).T * hf.logit_scale.exp()
    order = [files.index(f) for f in sorted(files, key=lambda p: (classes.index(p.parent.name), p.name))]
    torch.testing.assert_close(got, want[order], atol=1e-4, rtol=1e-4)
    assert ev.accuracy()["digits"] == float((want[order].argmax(1) == ev.tasks["digits"].labels).float().mean())


def test_float32_images_exist_only_one_batch_at_a_time(micro_zoo, monkeypatch):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40).with_settings(batch_size=16)
    for d in ev.tasks.values():
        assert d.pixels.dtype == torch.uint8  # what the evaluator holds: uint8 only
    rows = []
    real = E.preprocess

    def spy(x, *a, **k):
        out = real(x, *a, **k)
        rows.append(out.shape[0])
        return out

    monkeypatch.setattr(E, "preprocess", spy)
    ev.accuracy()
    assert max(rows) <= 16 and sum(rows) == 40 * len(ev.tasks)
    monkeypatch.undo()
    small = E.auto_batch_size(build_model(arch="ViT-B-32"), budget_mb=64)
    assert 1 <= small < E.auto_batch_size(build_model(arch="ViT-B-32"), budget_mb=512) <= E.MAX_BATCH


def test_rounds_converge_to_the_exact_accuracy_and_cancel_stops_them(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=60)
    ft = micro_zoo.finetuned(micro_zoo.tasks[0])
    exact = ev.counts(ft)
    seen = list(ev.rounds(ft, first=8))
    ns = [r[micro_zoo.tasks[0]].n for r in seen]
    assert ns[0] == 8 and ns == sorted(ns) and ns[-1] == 60
    assert {t: (e.correct, e.n) for t, e in seen[-1].items()} == exact
    assert all(e.done and e.half_width == 0 for e in seen[-1].values())
    first = seen[0][micro_zoo.tasks[0]]
    assert first.interval[0] <= first.accuracy <= first.interval[1] and first.half_width > 0.1
    ev.accuracy(micro_zoo.finetuned(micro_zoo.tasks[1]))  # someone else moves the shared model between rounds
    it = ev.rounds(ft, first=8)
    next(it)
    assert {t: (e.correct, e.n) for t, e in list(it)[-1].items()} == exact
    import threading

    stop = threading.Event()
    it = ev.rounds(ft, first=4)
    next(it)
    stop.set()
    assert list(ev.rounds(ft, first=4, cancel=stop)) == []
    with pytest.raises(Cancelled):
        ev.accuracy(ft, cancel=lambda: True)


def test_cpu_bf16_tower_follows_the_weights_loaded_by_any_view(micro_zoo):
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    bf = ev.with_settings(bf16=True)
    a, b = micro_zoo.finetuned(micro_zoo.tasks[0]), micro_zoo.finetuned(micro_zoo.tasks[1])
    acc_a = bf.accuracy(a)
    fp32_b = ev.accuracy(b)  # the fp32 view moves the shared model
    assert bf.accuracy(a) == acc_a
    acc_b = bf.accuracy(b)
    assert acc_b != acc_a  # a stale low-precision copy would still hold a's weights
    assert all(abs(acc_b[t] - fp32_b[t]) <= 0.1 for t in fp32_b)


def test_rounds_reload_a_new_dict_that_reuses_a_freed_dicts_id(micro_zoo):
    """The model remembers which dict it holds by id and by its visual tensors, not by id alone: a merged dict
    freed and the next one allocated at the same address (here: the same dict given other tensors) is reloaded.
    With an id alone the LiNeS page showed the previous target's accuracies for the next target."""
    ev = Evaluator.for_model_set(micro_zoo, "test", subsample=40)
    a, b = micro_zoo.finetuned(micro_zoo.tasks[0]), micro_zoo.finetuned(micro_zoo.tasks[1])
    want_a, want_b = ev.accuracy(a), ev.accuracy(b)
    assert want_a != want_b

    def final(sd):
        return {t: e.accuracy for t, e in list(ev.rounds(sd, first=7))[-1].items()}

    sd = dict(a)
    assert final(sd) == want_a
    sd.update(b)  # same id, new tensors: what a freed dict's successor at the same address looks like
    assert final(sd) == want_b
    assert final(sd) == want_b  # and unchanged tensors are not reloaded needlessly
    loads = []
    real = ev.load
    ev.load = lambda s: (loads.append(1), real(s))[1]
    final(sd)
    assert loads == []
