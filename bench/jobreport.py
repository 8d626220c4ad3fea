"""The job-vs-CLI report both training-lab benchmarks print (bench/continual.py, bench/finetune_lab.py):
a page's background `Job` against the same config through the CLI function, measured in one run."""

from __future__ import annotations

import os
import time

import pandas as pd


def job_row(job, cpu0: float, load: float, polls: int) -> dict:
    """One finished job's row: wall and CPU seconds, the load at its start, time to first progress and step."""
    return {
        "path": "job",
        "seconds": job.elapsed,
        "cpu": time.process_time() - cpu0,
        "load": load,
        "first_progress": job.first_progress,
        "first_step": job.first_step,
        "polls": polls,
    }


def print_report(rows: list[dict]) -> None:
    """The table of runs and the job / CLI ratios (wall and CPU) against the 1.3 target."""
    t = pd.DataFrame(rows)
    print(t.to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    cli_s, job_s = t[t.path == "cli"]["seconds"].mean(), t[t.path == "job"]["seconds"].mean()
    cli_c, job_c = t[t.path == "cli"]["cpu"].mean(), t[t.path == "job"]["cpu"].mean()
    j = t[t.path == "job"]
    print(
        f"\nmean wall time: CLI {cli_s:.1f} s, job {job_s:.1f} s; job / CLI = {job_s / cli_s:.2f} (target <= 1.3; "
        f"CPU {cli_c:.1f} s vs {job_c:.1f} s: {job_c / cli_c:.2f}); "
        f"first progress {j['first_progress'].max():.3f} s, first training step {j['first_step'].max():.2f} s "
        f"(worst of {len(j)}); load average now {', '.join(f'{v:.1f}' for v in os.getloadavg())} on "
        f"{os.cpu_count()} cores"
    )
