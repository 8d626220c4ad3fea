"""core.live_report: the LiNeS lesson (which task shows LiNeS beating uniform scaling) is measured, kept on
disk and read back; comparison tables and best-alpha choice live in test_live.py."""

import os

import pytest

from core.analysis_cache import AnalysisCache
from core.evaluate import Evaluator
from core.live import LiveMerger, single_task_spec, uniform_spec
from core.live_report import LESSON_ALPHAS, cached_lines_lesson, lines_lesson


@pytest.fixture
def live(micro_zoo):
    evs = {s: Evaluator.for_model_set(micro_zoo, s) for s in ("val", "test")}
    return LiveMerger(micro_zoo, evaluator_for=lambda es: evs[es.split])


def test_the_lesson_is_the_task_where_lines_beats_uniform_most(live, micro_zoo):
    steps = []
    les = lines_lesson(live, progress=lambda i, n, msg: steps.append((i, n)))
    assert steps[-1] == (len(micro_zoo.tasks), len(micro_zoo.tasks))
    for task in micro_zoo.tasks:  # the advantage is the mean score difference, recomputed here
        diffs = [
            live.evaluate(single_task_spec(task, a), "val")["score"]
            - live.evaluate(uniform_spec(task, a), "val")["score"]
            for a in LESSON_ALPHAS
        ]
        assert les["advantage"][task] == pytest.approx(sum(diffs) / len(diffs))
        assert les["wins"][task] == [a for a, d in zip(LESSON_ALPHAS, diffs) if d > 0]
    assert les["target"] == max(micro_zoo.tasks, key=lambda t: les["advantage"][t])
    assert les["split"] == "val" and les["alphas"] == list(LESSON_ALPHAS)


def test_the_lesson_is_kept_on_disk_and_dropped_when_a_checkpoint_changes(live, micro_zoo, tmp_path):
    cache = AnalysisCache(tmp_path)
    assert cached_lines_lesson(micro_zoo, cache=cache, compute=False) is None
    measured = cached_lines_lesson(micro_zoo, live, cache=cache)
    assert cached_lines_lesson(micro_zoo, cache=cache, compute=False) == measured
    ft = micro_zoo.finetuned_paths[micro_zoo.tasks[0]]
    st = os.stat(ft)
    os.utime(ft, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # the file changed: the lesson is stale
    try:
        assert cached_lines_lesson(micro_zoo, cache=cache, compute=False) is None
    finally:
        os.utime(ft, ns=(st.st_atime_ns, st.st_mtime_ns))


class _CurveLive:
    """A stand-in LiveMerger whose validation score is a given function of (method, λ)."""

    tasks = eval_tasks = ("a", "b")

    def __init__(self, score):
        self.score, self.asked = score, []

    def evaluate(self, spec, split):
        lam = spec.param_dict["coefficients"]
        self.asked.append((spec.method, lam, split))
        return {"normalized_mean": self.score(spec.method, lam)}


def test_the_merge_lesson_takes_each_methods_best_lambda_and_stops_after_the_peak():
    from core.live_report import LESSON_METHODS, LESSON_PATIENCE, merge_lesson
    from core.merging import get_method

    peaks = {"task_arithmetic": 0.2, "ties": 0.7, "tsv_m": 1.5, "iso_c": 3.0}  # iso_c peaks on its grid's end
    for i, m in enumerate(LESSON_METHODS):  # the others somewhere inside their grids
        grid = get_method(m).lambda_grid
        peaks.setdefault(m, grid[(3 * i + 1) % len(grid)])
    live = _CurveLive(lambda m, lam: 1.0 - abs(lam - peaks[m]))
    steps = []
    les = merge_lesson(live, progress=lambda d, n, msg: steps.append((d, n)))
    assert les["lambda"] == peaks and les["split"] == "val"
    for m, peak in peaks.items():
        grid = list(get_method(m).lambda_grid)
        asked = [lam for meth, lam, split in live.asked if meth == m]
        # walked upwards from the grid's start, left LESSON_PATIENCE points after the peak (or at the end)
        assert asked == grid[: min(len(grid), grid.index(peak) + 1 + LESSON_PATIENCE)]
        assert les["normalized"][m] == pytest.approx(1.0) and list(les["curve"][m]) == [str(x) for x in asked]
    total = sum(len(get_method(m).lambda_grid) for m in peaks)
    assert steps[-1] == (total, total) and all(s[0] <= total for s in steps)
    flat = _CurveLive(lambda m, lam: 0.5)  # ties keep the first (smallest) λ
    assert set(merge_lesson(flat)["lambda"].values()) == {0.1}


def test_the_merge_lesson_covers_every_method_with_a_global_lambda():
    from core.live_report import LESSON_METHODS
    from core.merging import METHODS, get_method

    with_lambda = [m for m in METHODS if any(p.name == "coefficients" for p in get_method(m).params)]
    assert list(LESSON_METHODS) == with_lambda
    # the methods whose published λ sat far off the styled zoo's are in it; a method without a λ is not
    assert {"cart", "iso_cts", "pcb", "ties", "tsv_m"} <= set(LESSON_METHODS)
    assert "weight_average" not in LESSON_METHODS


def test_the_merge_lesson_refuses_a_set_without_evaluation_data():
    live = _CurveLive(lambda m, lam: 0.0)
    live.eval_tasks = ()
    with pytest.raises(ValueError, match="no task with evaluation data"):
        from core.live_report import merge_lesson

        merge_lesson(live)


def test_the_merge_lesson_is_measured_on_the_set_and_kept_on_disk(live, micro_zoo, tmp_path):
    from core.live_report import cached_merge_lesson
    from core.spec import MergeSpec

    cache = AnalysisCache(tmp_path)
    assert cached_merge_lesson(micro_zoo, cache=cache, compute=False) is None
    les = cached_merge_lesson(micro_zoo, live, cache=cache)
    for m, lam in les["lambda"].items():  # the stored score is the live merger's own on val
        got = live.evaluate(MergeSpec.make(m, {"coefficients": lam}), "val")["normalized_mean"]
        assert les["normalized"][m] == pytest.approx(got)
        assert les["normalized"][m] == max(les["curve"][m].values())
    assert cached_merge_lesson(micro_zoo, cache=cache, compute=False) == les
