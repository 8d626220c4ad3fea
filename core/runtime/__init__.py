"""Runtime services every room shares: background jobs, locks, thread settings, paths, the run log.

- `jobs.Job`: one background-job runner (progress, cancel, result, error) for every page's long task.
- `locks.FORWARD_LOCK`: one forward pass at a time on a shared evaluator (public name, one place).
- `threads`: how many torch threads a run should use on this (possibly busy) machine.
- `devices.resolve_device`: where merges, SVDs, ESDs and evaluations compute (auto: CUDA when torch sees one).
- `paths`: where caches, the run log and exports live ($MERGESCOPE_CACHE, $MERGESCOPE_EXPORT_DIR).
- `runlog`: the SQLite run log (`RunLog`) and `resolve_run_log`, the one meaning of run_log=... .

Nothing here imports torch at module level except `threads` (lazily) and `devices` — paths and the run log stay cheap.
"""
