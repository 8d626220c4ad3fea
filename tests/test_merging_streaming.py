"""Merges from files: streamed (lazy safetensors) == in memory, bitwise, for every registered method;
TaskVectors reads no tensor before the merge; a merge of N files never holds N models."""

import json
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

from core.checkpoints import load_state_dict, open_state_dict, save_state_dict
from core.checkpoints.formats import LazyStateDict
from core.errors import NonFiniteError
from core.merging import METHODS, TaskVectors, merge, merged_direction

ROOT = Path(__file__).resolve().parents[1]


def _tower(seed: int, d: int = 16, blocks: int = 3, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {
        "visual.conv1.weight": torch.randn(d, 3, 4, 4, generator=g) * scale,
        "visual.proj": torch.randn(d, 8, generator=g),
    }
    for i in range(blocks):
        p = f"visual.transformer.resblocks.{i}."
        sd[p + "attn.in_proj_weight"] = torch.randn(3 * d, d, generator=g) * scale
        sd[p + "attn.out_proj.weight"] = torch.randn(d, d, generator=g) * scale
        sd[p + "mlp.c_fc.weight"] = torch.randn(4 * d, d, generator=g) * scale
        sd[p + "mlp.c_proj.weight"] = torch.randn(d, 4 * d, generator=g) * scale
        sd[p + "ln_1.weight"] = torch.ones(d)
    return sd


def write_tower_files(root: Path, n_tasks: int = 4) -> Path:
    """base.safetensors and t0..t{n-1}.safetensors: a small tower and its fine-tunes, under `root`."""
    base = _tower(0)
    save_state_dict(base, root / "base.safetensors")
    for t in range(n_tasks):
        delta = _tower(100 + t, scale=0.05)
        save_state_dict({k: base[k] + delta[k] for k in base}, root / f"t{t}.safetensors")
    return root


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return write_tower_files(tmp_path_factory.mktemp("stream"))


@pytest.mark.parametrize("method", sorted(METHODS))
def test_merge_from_files_equals_merge_in_memory_bitwise(files, method):
    paths = [files / f"t{t}.safetensors" for t in range(4)]
    lazy = merge(open_state_dict(files / "base.safetensors"), [open_state_dict(p) for p in paths], method)
    eager = merge(load_state_dict(files / "base.safetensors"), [load_state_dict(p) for p in paths], method)
    assert isinstance(open_state_dict(paths[0]), LazyStateDict)
    assert list(lazy) == list(eager)
    for k in eager:
        assert torch.equal(lazy[k], eager[k]), (method, k)


@pytest.mark.parametrize("method", ["magmax", "iso_c", "breadcrumbs"])
def test_key_wise_reads_reuse_buffers_and_never_touch_in_memory_inputs(files, monkeypatch, method):
    """Key-wise methods read every key into one buffer per file (TaskVectors.keywise's pool) and subtract the
    base there in place; in-memory inputs (mixed with lazy ones here) are never written to."""
    buffers, reads = set(), []
    original = LazyStateDict.read_into

    def spying(self, key, buf):
        if buf is not None:
            buffers.add(buf.data_ptr())
            reads.append(key)
        return original(self, key, buf)

    monkeypatch.setattr(LazyStateDict, "read_into", spying)
    paths = [files / f"t{t}.safetensors" for t in range(4)]
    base = load_state_dict(files / "base.safetensors")
    eager = [load_state_dict(p) for p in paths]
    before = [{k: v.clone() for k, v in sd.items()} for sd in (base, *eager)]
    mixed = merge(base, [eager[0], *(open_state_dict(p) for p in paths[1:])], method)
    want = merge(base, eager, method)
    for sd, kept in zip((base, *eager), before):
        assert all(torch.equal(sd[k], kept[k]) for k in kept)
    assert all(torch.equal(mixed[k], want[k]) for k in want)
    # 3 lazy files x 17 keys read into 3 buffers (each grown when a larger key comes), not 51 fresh tensors
    assert len(reads) == 3 * len(want) and 0 < len(buffers) <= 3 * 3, (len(reads), len(buffers))


def test_task_vectors_read_no_tensor_before_the_merge(files, monkeypatch):
    reads = []
    original = LazyStateDict.__getitem__

    def counting(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(LazyStateDict, "__getitem__", counting)
    base = open_state_dict(files / "base.safetensors")
    tvs = TaskVectors(base, [open_state_dict(files / f"t{t}.safetensors") for t in range(4)])
    assert reads == []  # keys, shapes and dtypes came from the headers
    assert tvs.keys == sorted(load_state_dict(files / "t0.safetensors")) and tvs.dtype == torch.float32
    assert tvs.shapes["visual.conv1.weight"] == torch.Size([16, 3, 4, 4])


_CHILD = textwrap.dedent(
    """
    import json, sys, threading, time
    from pathlib import Path
    import torch
    from core.checkpoints import open_state_dict, save_state_dict
    from core.merging import merge
    import core.merging.streaming
    # chunk temporaries small next to the model, as at ViT-L/14 scale: task arithmetic and TIES read 4x
    # the default width, so their slabs have 64K columns (8 MB of temporaries at 256K, a quarter model here)
    core.merging.streaming.CHUNK = 1 << 14
    # TIES's compiled kernel (numba's runtime, ~80 MB once per process, not per model): loaded before the baseline
    from core.merging import fused
    fused.usable(torch.device("cpu"), torch.float32)
    root, method, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    def anon():
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    base = open_state_dict(root / "base.safetensors")
    fts = [open_state_dict(root / f"t{t}.safetensors") for t in range(n)]
    start = peak = anon()
    done = threading.Event()
    def sample():
        global peak
        while not done.wait(0.005):
            peak = max(peak, anon())
    th = threading.Thread(target=sample, daemon=True); th.start()
    out = merge(base, fts, method)
    save_state_dict(out, root / f"out-{method}.safetensors")
    del out
    done.set(); th.join()
    peak = max(peak, anon())
    print(json.dumps({"above": peak - start}))
    """
)


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "tsv_m", "iso_cts"])
def test_a_merge_of_n_files_does_not_hold_n_models(tmp_path, method):
    """8 fine-tunes of a 32 MB model: loading them would take 8+ model sizes; the streamed merge
    (output included, saved to safetensors) stays under 3 (slabs of 64K columns: at ViT-L/14 size the
    default ones are as small next to the model). The key-wise SVD methods hold one key's
    tensors at a time: its 64 keys of 256 x 512 are each 1.6 % of the model, as ViT-B/32's largest is 2.7 %
    and ViT-L/14's 1.4 % (with 16 keys of 1024 x 512 one key of 8 tasks alone is half a model)."""
    g = torch.Generator().manual_seed(0)
    keywise = method in ("tsv_m", "iso_cts")
    rows, blocks = (256, 64) if keywise else (1024, 16)
    shapes = {f"visual.transformer.resblocks.{i}.mlp.c_fc.weight": (rows, 512) for i in range(blocks)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    save_state_dict(base, tmp_path / "base.safetensors")
    n = 8
    for t in range(n):
        save_state_dict(
            {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in base.items()}, tmp_path / f"t{t}.safetensors"
        )
    model_bytes = sum(v.numel() * 4 for v in base.values())
    del base
    r = subprocess.run(
        [sys.executable, "-c", _CHILD, str(tmp_path), method, str(n)],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    above = json.loads(r.stdout.strip().splitlines()[-1])["above"]
    assert above < 3 * model_bytes, f"{method}: peak anonymous memory {above / model_bytes:.2f} model sizes"


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "tsv_m"])
def test_nonfinite_values_in_files_read_in_slices_are_refused_by_name(tmp_path, monkeypatch, method):
    """Fine-tuned tensors read slice by slice straight into the slabs are checked per slab: a NaN in
    the middle of a tensor cut by chunk boundaries names its checkpoint, tensor and count; opting in warns."""
    import core.merging.streaming as streaming
    from core.errors import NonFiniteError

    monkeypatch.setattr(streaming, "CHUNK", 97)  # slices of every tensor land in several slabs
    base = _tower(0)
    save_state_dict(base, tmp_path / "base.safetensors")
    key = "visual.transformer.resblocks.1.mlp.c_fc.weight"
    for t in range(3):
        ft = {k: v + 0.05 * _tower(100 + t)[k] for k, v in base.items()}
        if t == 2:
            ft[key] = ft[key].clone()
            ft[key].view(-1)[[300, 301, 900]] = torch.tensor([float("nan"), float("inf"), float("nan")])
        save_state_dict(ft, tmp_path / f"t{t}.safetensors")
    fts = [open_state_dict(tmp_path / f"t{t}.safetensors") for t in range(3)]
    with pytest.raises(NonFiniteError) as e:
        merge(open_state_dict(tmp_path / "base.safetensors"), {f"t{t}": f for t, f in enumerate(fts)}, method)
    assert (e.value.source, e.value.key, e.value.n_bad) == ("t2", key, 3)
    with pytest.warns(RuntimeWarning, match=f"t2: tensor '{key}' holds 3 non-finite"):
        merge(
            open_state_dict(tmp_path / "base.safetensors"),
            {f"t{t}": f for t, f in enumerate(fts)},
            method,
            allow_nonfinite=True,
        )


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_takes_a_device_and_returns_its_direction_on_the_cpu(files, method):
    """The device path (slabs and keys moved to `device`, results back through the writer) is the code that
    runs on the CPU too: device="cpu" gives the default's bits here; on a machine with a GPU the CUDA result
    matches the CPU one to float32 rounding."""
    from core.merging import merged_direction

    base = open_state_dict(files / "base.safetensors")
    fts = [open_state_dict(files / f"t{t}.safetensors") for t in range(4)]
    cpu = merged_direction(base, fts, method, device="cpu")
    assert all(v.device.type == "cpu" for v in cpu.vector.values())
    auto = merged_direction(base, fts, method)
    if torch.cuda.is_available():
        gpu = merged_direction(base, fts, method, device="cuda")
        assert all(v.device.type == "cpu" for v in gpu.vector.values())
        for k in cpu.vector:
            torch.testing.assert_close(gpu.vector[k], cpu.vector[k], rtol=1e-4, atol=1e-6)
    else:
        assert all(torch.equal(auto.vector[k], cpu.vector[k]) for k in cpu.vector)
        with pytest.raises(ValueError, match="no CUDA GPU"):
            merged_direction(base, fts, method, device="cuda")


def test_a_consumer_that_does_not_check_its_columns_is_stopped(files):
    tvs = TaskVectors(open_state_dict(files / "base.safetensors"), [open_state_dict(files / "t0.safetensors")])
    with pytest.raises(ValueError, match="check"):
        next(tvs.chunks(check="rows"))
    it = tvs.chunks(check="columns")
    ch = next(it)
    assert ch.unchecked  # the slices read into it wait for the consumer's check
    with pytest.raises(RuntimeError, match="not checked"):
        next(it)


def test_column_sums_that_overflow_are_rechecked_not_refused(tmp_path):
    """Finite float32 entries whose sum over the tasks overflows make the cheap column check fail: the
    per-tensor check then finds them finite, and the merge goes on (its sum is inf, as the reference's)."""
    key = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    base = {key: torch.zeros(64, 32)}
    save_state_dict(base, tmp_path / "b.safetensors")
    for t in range(2):
        save_state_dict({key: torch.full((64, 32), 3e38)}, tmp_path / f"t{t}.safetensors")
    fts = [open_state_dict(tmp_path / f"t{t}.safetensors") for t in range(2)]
    d = merged_direction(open_state_dict(tmp_path / "b.safetensors"), fts, "task_arithmetic", coefficients=1.0)
    assert bool(torch.isinf(d.vector[key]).all())


@pytest.mark.parametrize("method", ["task_arithmetic", "ties", "consensus"])
def test_a_nonfinite_base_read_in_slices_is_refused_by_name(tmp_path, monkeypatch, method):
    """The base is read in slices into the slabs too: a NaN in it is named as the base's."""
    import core.merging.streaming as streaming
    from core.errors import NonFiniteError

    monkeypatch.setattr(streaming, "CHUNK", 97)
    base = _tower(0)
    key = "visual.transformer.resblocks.2.attn.out_proj.weight"
    for t in range(2):
        save_state_dict({k: v + 0.05 * _tower(100 + t)[k] for k, v in base.items()}, tmp_path / f"t{t}.safetensors")
    base[key] = base[key].clone()
    base[key].view(-1)[[5, 200]] = float("nan")
    save_state_dict(base, tmp_path / "base.safetensors")
    fts = {f"t{t}": open_state_dict(tmp_path / f"t{t}.safetensors") for t in range(2)}
    with pytest.raises(NonFiniteError) as e:
        merge(open_state_dict(tmp_path / "base.safetensors"), fts, method)
    assert (e.value.source, e.value.key, e.value.n_bad) == ("base", key, 2)


KEY_WISE = ["tsv_m", "iso_c", "iso_cts", "cart", "magmax", "breadcrumbs"]


@pytest.mark.parametrize("method", KEY_WISE)
def test_key_wise_checks_ride_on_the_keys_norm(monkeypatch, method):
    """Key-wise methods check NaN/Inf through each key's ||sum_t tau_t||_1 (TaskVectors.keywise): finite
    inputs take no per-tensor check; a bad value is still named, base first; finite inputs whose sum
    overflows float32 pass the re-check and merge."""
    import core.merging.streaming as streaming

    calls = []
    real = streaming.check_finite
    monkeypatch.setattr(streaming, "check_finite", lambda t, s, k, a: calls.append((s, k)) or real(t, s, k, a))
    base = _tower(0)
    fts = [_tower(1 + t) for t in range(3)]
    merge(base, fts, method)
    assert calls == []
    # both the base and t1 spoiled: the re-check reads the base first and names it
    key = "visual.transformer.resblocks.1.mlp.c_fc.weight"
    bad_base, bad_ft = dict(base), [dict(f) for f in fts]
    bad_base[key] = base[key].clone()
    bad_base[key][0, 0] = float("inf")
    bad_ft[1][key] = fts[1][key].clone()
    bad_ft[1][key][3, 2] = float("nan")
    with pytest.raises(NonFiniteError) as e:
        merge(bad_base, bad_ft, method)
    assert (e.value.source, e.value.key, e.value.n_bad) == ("base", key, 1)
    with pytest.raises(NonFiniteError) as e:
        merge(base, bad_ft, method)
    assert (e.value.source, e.value.key, e.value.n_bad) == ("task1", key, 1)
    # 3e38 in every task: the sum (and its norm) overflows to inf, every input is finite
    big = [dict(f) for f in fts]
    for f in big:
        f[key] = base[key] + 3e38
    calls.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the methods' own overflow (float32 SVDs of inf)
        try:
            merge(base, big, method)
        except torch.linalg.LinAlgError:  # an SVD of an overflowed matrix may fail: not the check's business
            pass
    assert sorted(calls) == sorted((s, key) for s in ["base", "task0", "task1", "task2"])


def test_key_wise_passes_prefetch_the_next_keys_while_the_caller_works(files, monkeypatch):
    """TaskVectors.keywise asks every lazy input for the next keys (LazyStateDict.prefetch, up to
    PREFETCH_BYTES of each file) after reading a key and before handing it over, so a cold disk reads
    ahead while the method decomposes; each key is asked for once, the first never (it is read at once)."""
    import core.merging.streaming as streaming

    events = []
    real_read, real_prefetch = LazyStateDict.read_into, LazyStateDict.prefetch

    def reading(self, key, buf):
        events.append(("read", self.path.name, key))
        return real_read(self, key, buf)

    def prefetching(self, key):
        events.append(("prefetch", self.path.name, key))
        return real_prefetch(self, key)

    monkeypatch.setattr(LazyStateDict, "read_into", reading)
    monkeypatch.setattr(LazyStateDict, "prefetch", prefetching)
    names = {"base.safetensors", *(f"t{t}.safetensors" for t in range(4))}

    def run(budget):
        events.clear()
        monkeypatch.setattr(streaming, "PREFETCH_BYTES", budget)
        base = open_state_dict(files / "base.safetensors")
        tvs = TaskVectors(base, [open_state_dict(files / f"t{t}.safetensors") for t in range(4)])
        handed = []
        for _ in tvs.keywise():
            handed.append(len(events))
        hints = [(e[1], e[2]) for e in events if e[0] == "prefetch"]
        assert sorted(hints) == sorted((n, k) for n in names for k in tvs.keys[1:])  # each once, never the first
        return tvs.keys, handed

    keys, handed = run(1)  # one key ahead: key i + 1 asked for after key i is read, before it is handed over
    for i, key in enumerate(keys[:-1]):
        last_read = max(j for j, e in enumerate(events) if e[0] == "read" and e[2] == key)
        hinted = [j for j, e in enumerate(events) if e[0] == "prefetch" and e[2] == keys[i + 1]]
        assert last_read < min(hinted) and max(hinted) < handed[i]
    keys, handed = run(1 << 30)  # the whole (small) model fits the budget: every later key asked for at once
    first = [j for j, e in enumerate(events) if e[0] == "prefetch"]
    assert max(j for j, e in enumerate(events) if e[0] == "read" and e[2] == keys[0]) < min(first)
    assert max(first) < handed[0]
