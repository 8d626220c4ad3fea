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
