"""The on-disk analysis cache: exact round trips, invalidation when a file changes, streamed task vectors."""

import json
import os
import time

import numpy as np
import pandas as pd
import pytest
import torch

from core.analysis_cache import AnalysisCache, StreamedTaskVector, file_fingerprint, float_keys, restrict
from core.checkpoints import load_state_dict, open_state_dict, save_state_dict
from core.scopes import weight_scopes
from core.spectra import spectral_table
from core.task_vectors import block_table, cosine_matrix, kind_table, parameter_table, sign_conflict_table, task_vector


def _model(seed: int, blocks: int = 2, d: int = 24) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"visual.conv1.weight": torch.randn(d, 3, 4, 4, generator=g), "visual.proj": torch.randn(d, 16, generator=g)}
    for i in range(blocks):
        p = f"visual.transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = torch.randn(3 * d, d, generator=g)
        sd[p + "attn.out_proj.weight"] = torch.randn(d, d, generator=g)
        sd[p + "mlp.c_fc.weight"] = torch.randn(4 * d, d, generator=g)
        sd[p + "ln_1.weight"] = torch.ones(d) + 0.01 * torch.randn(d, generator=g)
    sd["visual.positional_embedding"] = torch.randn(5, d, generator=g)
    return sd


@pytest.fixture
def files(tmp_path):
    base = _model(0)
    save_state_dict(base, tmp_path / "base.safetensors")
    for t in range(3):
        ft = {
            k: v + 0.05 * torch.randn(v.shape, generator=torch.Generator().manual_seed(10 + t)) for k, v in base.items()
        }
        save_state_dict(ft, tmp_path / f"task{t}.safetensors")
    return tmp_path


def test_tables_round_trip_exactly(files, tmp_path):
    cache = AnalysisCache(tmp_path / "cache")
    base = load_state_dict(files / "base.safetensors")
    tvs = {t: task_vector(base, load_state_dict(files / f"task{t}.safetensors")) for t in range(3)}
    tvs = {f"t{t}": v for t, v in tvs.items()}
    p = parameter_table(base, tvs)
    values = {
        "spectra": spectral_table(base),
        "scopes": weight_scopes(base),
        "cosine": cosine_matrix(tvs),
        "tv": {"parameter": p, "block": block_table(base, tvs, params=p), "sign": sign_conflict_table(tvs)},
    }
    for kind, value in values.items():
        cache.put(kind, [files / "base.safetensors"], {"x": 1}, value)
        got = cache.get(kind, [files / "base.safetensors"], {"x": 1})
        if isinstance(value, dict):
            assert set(got) == set(value)
            for k in value:
                pd.testing.assert_frame_equal(got[k], value[k], check_exact=True)
        else:
            pd.testing.assert_frame_equal(got, value, check_exact=True)
    assert values["spectra"]["shape"].map(type).eq(tuple).all()  # shapes come back as tuples
    assert cache.get("spectra", [files / "base.safetensors"], {"x": 2}) is None  # other params: a miss


def test_cache_is_read_back_and_invalidated_when_a_file_changes(files, tmp_path):
    cache = AnalysisCache(tmp_path / "cache")
    path = files / "task0.safetensors"
    calls = []

    def compute():
        calls.append(1)
        return spectral_table(load_state_dict(path))

    first = cache.get_or_compute("spectra", [path], {"tower": None}, compute)
    again = AnalysisCache(tmp_path / "cache").get_or_compute("spectra", [path], {"tower": None}, compute)
    assert len(calls) == 1  # a new cache object (a reopened app) reads the table from disk
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert len(cache.entries()) == 1

    sd = load_state_dict(path)
    sd["visual.proj"] = sd["visual.proj"] * 3.0  # the file changes: new contents, size kept, new mtime
    time.sleep(0.01)
    save_state_dict(sd, path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    changed = cache.get_or_compute("spectra", [path], {"tower": None}, compute)
    assert len(calls) == 2
    row = changed["name"] == "visual.proj"
    np.testing.assert_allclose(changed.loc[row, "lambda_max"].item(), 9 * first.loc[row, "lambda_max"].item())
    assert len(cache.entries()) == 1  # the stale entry for the same file and params is gone


def test_corrupt_entries_are_misses(files, tmp_path):
    cache = AnalysisCache(tmp_path / "cache")
    path = files / "base.safetensors"
    cache.put("scopes", [path], None, weight_scopes(load_state_dict(path)))
    (entry,) = cache.entries()
    entry.write_text("{not json")
    assert cache.get("scopes", [path], None) is None
    with pytest.raises(TypeError, match="DataFrames"):
        cache.put("scopes", [path], None, [1, 2])


def test_fingerprint_of_a_directory_lists_its_files(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"12")
    (tmp_path / "b.json").write_text(json.dumps({}))
    fp = file_fingerprint(tmp_path)
    assert [os.path.basename(f[0]) for f in fp] == ["a.bin", "b.json"] and fp[0][1] == 2


def test_streamed_task_vector_equals_task_vector_bitwise(files):
    base = open_state_dict(files / "base.safetensors")
    ft = open_state_dict(files / "task1.safetensors")
    ref = task_vector(load_state_dict(files / "base.safetensors"), load_state_dict(files / "task1.safetensors"))
    tv = StreamedTaskVector(base, ft)
    assert list(tv) == list(ref)
    for k in ref:
        assert torch.equal(tv[k], ref[k])
    assert float_keys(ft) == [
        k for k, v in load_state_dict(files / "task1.safetensors").items() if v.is_floating_point()
    ]
    p_ref = parameter_table(load_state_dict(files / "base.safetensors"), {"t": ref})
    pd.testing.assert_frame_equal(parameter_table(base, {"t": tv}), p_ref, check_exact=True)
    pd.testing.assert_frame_equal(kind_table(base, {"t": tv}), kind_table(base, {"t": tv}, params=p_ref))
    with pytest.raises(KeyError):
        tv["nope"]


def test_restrict_is_a_view(files):
    sd = open_state_dict(files / "base.safetensors")
    view = restrict(sd, ["visual.proj", "visual.conv1.weight"])
    assert list(view) == ["visual.proj", "visual.conv1.weight"] and "visual.proj" in view
    assert torch.equal(view["visual.proj"], sd["visual.proj"])
    with pytest.raises(KeyError):
        restrict(sd, ["missing"])
