"""Locks shared across rooms, with public names.

FORWARD_LOCK: one forward pass at a time through a shared `Evaluator`. An evaluator loads weights
into its model in place, so two concurrent passes would race; on 2 cores they would also only slow
each other down. The live loop, sweeps run in-process and the training labs' evaluations take it.
"""

from __future__ import annotations

import threading

FORWARD_LOCK = threading.RLock()
