"""core.checkpoints.validate_model_set: a model set's files are checked before use, and the report is grouped.

Every checkpoint is a tiny open_clip-named ViT image tower written here (tests/test_plots.tiny_visual).
"""

from __future__ import annotations

import torch
from test_plots import tiny_visual

from core.checkpoints import (
    KINDS,
    Issue,
    ValidationReport,
    save_state_dict,
    to_hf_names,
    validate_model_set,
)
from core.checkpoints.validate import all_finite
from core.modelset import ModelSet

WIDTH, BLOCKS = 16, 2


def write(path, sd):
    save_state_dict(sd, path)
    return path


def base_sd():
    return tiny_visual(0, width=WIDTH, blocks=BLOCKS)


def finetune(seed: int, **kw):
    b = base_sd()
    noise = tiny_visual(seed, width=WIDTH, blocks=BLOCKS)
    return {k: b[k] + 0.01 * noise[k] for k in b} | kw


def model_set(tmp_path, **finetuned):
    """Write base.safetensors and one file per fine-tune (a state dict, or bytes written as they are)."""
    base = write(tmp_path / "base.safetensors", base_sd())
    paths = {}
    for task, sd in finetuned.items():
        path = tmp_path / f"{task}.safetensors"
        if isinstance(sd, bytes):
            path.write_bytes(sd)
        else:
            write(path, sd)
        paths[task] = path
    return base, paths


def kinds(report: ValidationReport) -> list[str]:
    return [g.kind for g in report.groups]


def group(report: ValidationReport, kind: str):
    (g,) = [g for g in report.groups if g.kind == kind]
    return g


def test_consistent_set_is_ok_with_no_issues(tmp_path):
    base, fts = model_set(tmp_path, a=finetune(1), b=finetune(2))
    report = validate_model_set(base, fts)
    assert report.ok and report.issues == () and report.groups == []
    assert report.files == {"base": str(base), "a": str(fts["a"]), "b": str(fts["b"])}
    assert "All checkpoints match the base (3 checkpoints)" in report.summary()
    assert "finite values" in report.summary()


def test_text_file_renamed_safetensors_says_it_is_text(tmp_path):
    base, fts = model_set(tmp_path, notes=b"my fine-tune went well, weights are on the other disk\n")
    report = validate_model_set(base, fts)
    assert not report.ok and kinds(report) == ["unreadable"]
    (issue,) = report.errors
    assert issue.file == str(fts["notes"]) and issue.kind == "unreadable"
    assert "not a safetensors or torch checkpoint" in issue.message
    assert "it is a text file starting 'my fine-tune went well" in issue.message


def test_git_lfs_pointer_and_html_page_are_named(tmp_path):
    lfs = b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n"
    html = b"<!DOCTYPE html><html><body>Not found</body></html>"
    base, fts = model_set(tmp_path, lfs=lfs, html=html)
    messages = {i.file: i.message for i in validate_model_set(base, fts).errors}
    assert "Git LFS pointer" in messages[str(fts["lfs"])] and "git lfs pull" in messages[str(fts["lfs"])]
    assert "an HTML page" in messages[str(fts["html"])]


def test_truncated_and_missing_files_are_unreadable(tmp_path):
    base, fts = model_set(tmp_path, cut=finetune(1))
    data = fts["cut"].read_bytes()
    fts["cut"].write_bytes(data[: len(data) // 2])
    fts["gone"] = tmp_path / "gone.safetensors"
    report = validate_model_set(base, fts)
    g = group(report, "unreadable")
    assert (
        kinds(report) == ["unreadable"] and g.count == 2 and g.headline() == "Could not read the checkpoints: 2 files"
    )
    by_file = {i.file: i.message for i in g.issues}
    assert "truncated" in by_file[str(fts["cut"])]
    assert "no such file" in by_file[str(fts["gone"])]


def test_truncated_header_is_unreadable(tmp_path):
    base, fts = model_set(tmp_path, cut=finetune(1))
    fts["cut"].write_bytes(fts["cut"].read_bytes()[:100])
    (issue,) = validate_model_set(base, fts).errors
    assert issue.kind == "unreadable" and "truncated" in issue.message


def test_unreadable_base_is_reported_and_fine_tunes_are_still_read(tmp_path):
    base, fts = model_set(tmp_path, a=finetune(1), bad=b"")
    base.write_text("base weights: see README")
    report = validate_model_set(base, fts)
    assert group(report, "unreadable").files == [str(base), str(fts["bad"])]
    assert "empty" in group(report, "unreadable").issues[1].message


def test_fine_tune_of_another_width_is_a_shape_mismatch_grouped_with_counts(tmp_path):
    wide = tiny_visual(1, width=2 * WIDTH, blocks=BLOCKS)
    base, fts = model_set(tmp_path, wide=wide)
    report = validate_model_set(base, fts)
    assert not report.ok and kinds(report) == ["shape"]
    g = group(report, "shape")
    assert g.count == len(wide) and g.files == [str(fts["wide"])]  # every tensor of the tower has the width in it
    assert g.headline() == f"Shape mismatch: {len(wide)} tensors in 1 file"
    assert len(g.examples(3)) == 3 and g.more(3) == len(wide) - 3
    assert "expected (16, 3, 4, 4)" in " ".join(i.message for i in g.issues)
    assert f"... and {len(wide) - 3} more of this kind" in report.summary()
    assert report.summary().count("  - ") == 3  # a few examples, not one line per key


def test_another_architecture_is_one_error_per_file_not_a_list_of_keys(tmp_path):
    deep = tiny_visual(1, width=WIDTH, blocks=BLOCKS + 2)
    other = {"visual.stem.weight": torch.zeros(4, 3), "visual.head.weight": torch.zeros(2, 4)}
    base, fts = model_set(tmp_path, deep=deep, resnet=other)
    report = validate_model_set(base, fts)
    assert kinds(report) == ["architecture"]  # no per-key lists, no "no blocks" warning on top
    g = group(report, "architecture")
    assert g.count == 2 and len(g.issues) == 2
    by_file = {i.file: i.message for i in g.issues}
    assert "has 4 transformer blocks, the base's 2" in by_file[str(fts["deep"])]
    assert "ViT (width 16, 4 blocks" in by_file[str(fts["deep"])]
    assert "has 0 transformer blocks, the base's 2" in by_file[str(fts["resnet"])]
    assert "2 are not in the base (e.g. 'visual.head.weight'" in by_file[str(fts["resnet"])]
    assert not [i for i in report.issues if i.kind in ("missing_key", "extra_key")]


def test_other_layer_names_with_the_same_blocks_are_another_architecture(tmp_path):
    renames = {"attn.": "attention.", "mlp.": "ffn.", "ln_1.": "norm1.", "ln_2.": "norm2."}
    other = {}
    for k, v in finetune(1).items():
        for a, b in renames.items():
            k = k.replace(a, b)
        other[k] = v
    base, fts = model_set(tmp_path, renamed=other)
    (issue,) = validate_model_set(base, fts).errors
    assert issue.kind == "architecture" and f"only 8 of its {len(other)} tensors are in the base" in issue.message


def test_hf_named_fine_tune_of_the_same_base_is_fine(tmp_path):
    hf = to_hf_names(finetune(1))
    base, fts = model_set(tmp_path, hf=hf)
    assert validate_model_set(base, fts).issues == ()


def nan_or_inf(value: float, where=(0, 0)):
    sd = finetune(3)
    sd["visual.proj"] = sd["visual.proj"].clone()
    sd["visual.proj"][where] = value
    return sd


def test_nan_is_an_error_naming_file_tensor_and_count(tmp_path):
    base, fts = model_set(tmp_path, diverged=nan_or_inf(float("nan")))
    report = validate_model_set(base, fts)
    assert not report.ok and kinds(report) == ["nonfinite"]
    (issue,) = report.errors
    assert (issue.file, issue.key) == (str(fts["diverged"]), "visual.proj")
    assert "contains 1 NaN value(s) out of 128" in issue.message


def test_inf_is_an_error_naming_the_tensor(tmp_path):
    sd = nan_or_inf(float("-inf"))
    sd["visual.transformer.resblocks.1.mlp.c_fc.bias"][5] = float("inf")
    base, fts = model_set(tmp_path, inf=sd)
    g = group(validate_model_set(base, fts), "nonfinite")
    assert g.count == 2 and {i.key for i in g.issues} == {"visual.proj", "visual.transformer.resblocks.1.mlp.c_fc.bias"}
    assert all("1 Inf value(s)" in i.message for i in g.issues)


def test_nan_in_the_base_is_found_too(tmp_path):
    base, fts = model_set(tmp_path, a=finetune(1))
    sd = base_sd()
    sd["visual.ln_pre.bias"][0] = float("nan")
    write(base, sd)
    (issue,) = validate_model_set(base, fts).errors
    assert issue.file == str(base) and issue.key == "visual.ln_pre.bias"


def test_header_only_check_skips_values(tmp_path):
    base, fts = model_set(tmp_path, diverged=nan_or_inf(float("nan")))
    report = validate_model_set(base, fts, check_finite=False)
    assert report.ok and not report.checked_finite and "headers only" in report.headline()


def test_zero_blocks_is_a_warning_not_ok_silence(tmp_path):
    stem = {k: v for k, v in base_sd().items() if ".resblocks." not in k}
    write(tmp_path / "base.safetensors", stem)
    write(tmp_path / "a.safetensors", {k: v + 1 for k, v in stem.items()})
    report = validate_model_set(tmp_path / "base.safetensors", {"a": tmp_path / "a.safetensors"})
    assert report.ok and kinds(report) == ["no_blocks"]
    g = group(report, "no_blocks")
    assert g.level == "warning" and g.count == 2
    assert "no transformer blocks found" in g.issues[0].message
    assert report.headline().startswith("The model set can be used, with warnings")
    assert "WARNING No transformer blocks found: 2 files" in report.summary()


def test_groups_are_ordered_most_serious_first_with_counts(tmp_path):
    b = base_sd()
    missing = {k: v for k, v in finetune(1).items() if not k.startswith("visual.ln_post")}
    extra = finetune(2) | {"visual.step": torch.tensor(7), "visual.extra.weight": torch.zeros(3)}
    half = finetune(4) | {"visual.proj": b["visual.proj"].half()}
    base, fts = model_set(
        tmp_path,
        a_missing=missing,
        b_extra=extra,
        c_half=half,
        d_wide=tiny_visual(1, width=2 * WIDTH, blocks=BLOCKS),
        e_nan=nan_or_inf(float("nan")),
        f_text=b"hello",
    )
    report = validate_model_set(base, fts)
    assert kinds(report) == [
        "unreadable",
        "shape",
        "nonfinite",
        "missing_key",
        "extra_key",
        "extra_buffer",
        "dtype_cast",
    ]
    levels = [g.level for g in report.groups]
    assert levels == sorted(levels, key=lambda lv: lv != "error")  # errors before warnings
    assert [list(KINDS).index(k) for k in kinds(report)] == sorted(list(KINDS).index(k) for k in kinds(report))
    counts = {g.kind: g.count for g in report.groups}
    assert counts["missing_key"] == 2 and counts["extra_key"] == 1 and counts["extra_buffer"] == 1
    assert counts["dtype_cast"] == 1 and counts["nonfinite"] == 1 and counts["unreadable"] == 1
    assert not report.ok and len(report.warnings) == 2
    text = report.summary()
    # the shape mismatch is the second group, right after the unreadable file, never after pages of keys
    assert text.index("ERROR Shape mismatch") < text.index("ERROR Missing tensors") < text.index("WARNING")
    assert report.headline().startswith("The model set cannot be used (7 checkpoints): Could not read")


def test_examples_take_one_message_per_file_first():
    issues = tuple(Issue("error", "a.pt", f"k{i}", f"a.pt: k{i}", "shape") for i in range(5)) + (
        Issue("error", "b.pt", "k0", "b.pt: k0", "shape"),
    )
    g = ValidationReport(issues).groups[0]
    assert g.examples(2) == ["a.pt: k0", "b.pt: k0"] and g.more(2) == 4
    assert g.headline() == "Shape mismatch: 6 tensors in 2 files"


def test_pickled_module_is_unreadable_with_the_opt_in_named(tmp_path):
    base, fts = model_set(tmp_path)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pt")
    (issue,) = validate_model_set(base, {"whole": tmp_path / "whole.pt"}).errors
    assert issue.kind == "unreadable" and "allow_pickle=True" in issue.message


def test_torch_files_and_lists_of_paths_are_accepted(tmp_path):
    base, _ = model_set(tmp_path)
    torch.save({"state_dict": {"module." + k: v for k, v in nan_or_inf(float("nan")).items()}}, tmp_path / "t.pt")
    report = validate_model_set(base, [tmp_path / "t.pt"])
    assert list(report.files) == ["base", "t"]
    (issue,) = report.errors
    assert issue.kind == "nonfinite" and issue.key == "module.visual.proj"  # named as stored in the file


def test_progress_is_reported_per_file_and_pass(tmp_path):
    base, fts = model_set(tmp_path, a=finetune(1))
    calls = []
    validate_model_set(base, fts, progress=lambda label, done, total: calls.append((label, done, total)))
    assert calls[0] == ("reading the header of base", 0, 4) and calls[-1] == ("done", 4, 4)
    assert ("checking the values of a", 3, 4) in calls


def test_model_set_validate_is_the_same_check(tmp_path):
    base, fts = model_set(tmp_path, wide=tiny_visual(1, width=2 * WIDTH, blocks=BLOCKS))
    ms = ModelSet(name="t", base_path=base, finetuned_paths=fts)
    assert ms.validate() == validate_model_set(base, fts)
    assert not ms.validate(check_finite=False).ok


def test_all_finite_is_exact_when_the_fast_sum_overflows():
    big = torch.full((4,), 3e38)  # finite values whose float32 sum is inf
    assert all_finite(big) and all_finite(torch.full((8,), 60000.0).half()) and all_finite(big.double())
    for bad in (float("nan"), float("inf"), -float("inf")):
        for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            t = torch.ones(5, dtype=dtype)
            t[2] = bad
            assert not all_finite(t), (bad, dtype)
    mixed = torch.tensor([float("inf"), -float("inf"), 1.0])  # inf + -inf: the sum is NaN, still caught
    assert not all_finite(mixed)


def test_large_finite_values_are_not_reported(tmp_path):
    sd = finetune(1)
    sd["visual.proj"] = torch.full_like(sd["visual.proj"], 3e38)
    base, fts = model_set(tmp_path, big=sd)
    assert validate_model_set(base, fts).issues == ()


def test_hf_directories_are_validated_shard_by_shard(tmp_path):
    base, _ = model_set(tmp_path)
    good, bad, empty = tmp_path / "good", tmp_path / "bad", tmp_path / "empty"
    write(good / "model.safetensors", to_hf_names(finetune(1)))
    write(bad / "model.safetensors", to_hf_names(nan_or_inf(float("nan"))))
    empty.mkdir()
    report = validate_model_set(base, {"good": good, "bad": bad, "empty": empty})
    assert kinds(report) == ["unreadable", "nonfinite"]
    assert group(report, "unreadable").files == [str(empty)] and "model.safetensors" in report.errors[0].message
    (nan,) = group(report, "nonfinite").issues
    assert nan.file == str(bad) and nan.key == "visual_projection.weight"  # named as stored in the file
