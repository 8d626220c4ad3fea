"""One run's settings: `TintConfig` (Model Tinting, or layer-wise AdaMerging with method="adamerging")."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields

from .model import HEAD

TINTING, ADAMERGING = "tinting", "adamerging"
METHODS = (TINTING, ADAMERGING)
# The official learning rates: Tinting trains λ and the tint with Adam at 1e-2 (ModelTinting with a
# trained classifier), AdaMerging trains λ alone at 1e-3 (EnnengYang/AdaMerging).
DEFAULT_LR = {TINTING: 1e-2, ADAMERGING: 1e-3}


@dataclass(frozen=True)
class TintConfig:
    """One run. `method`: "tinting" (λ + one tinted layer per task, pseudo-label loss) or
    "adamerging" (λ only, entropy loss, one Adam step per outer step over all tasks; `layer` and
    `filter` do not apply). `steps`: outer steps; `lr`: None = the method's official rate;
    `eval_every`: outer steps between per-task test evaluations; `data`: which unlabeled images
    train ("test": transductive, the papers' setting; "val": the validation images)."""

    layer: str = HEAD
    steps: int = 100
    lr: float | None = None
    batch: int = 32
    filter: bool = True
    data: str = "test"
    lambda_init: float = 0.3
    seed: int = 0
    eval_every: int = 25
    tasks: tuple[str, ...] | None = None
    method: str = TINTING

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.lr is None:
            object.__setattr__(self, "lr", DEFAULT_LR[self.method])
        if self.data not in ("test", "val"):
            raise ValueError(f"data must be 'test' (transductive) or 'val', got {self.data!r}")
        if self.steps < 0 or self.batch < 1 or self.lr <= 0 or self.eval_every < 1:
            raise ValueError(f"need steps >= 0, batch >= 1, lr > 0, eval_every >= 1; got {self}")

    @property
    def tint_layer(self) -> str | None:
        """The layer that gets a per-task copy (None: AdaMerging, no tint)."""
        return None if self.method == ADAMERGING else self.layer

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tasks"] = list(self.tasks) if self.tasks else None
        return d

    @staticmethod
    def from_dict(d: Mapping) -> TintConfig:
        known = {f.name for f in fields(TintConfig)}
        kw = {k: v for k, v in d.items() if k in known}
        if kw.get("tasks"):
            kw["tasks"] = tuple(kw["tasks"])
        return TintConfig(**kw)

    def label(self) -> str:
        if self.method == ADAMERGING:
            return "AdaMerging (layer-wise)"
        return f"Tinting ({self.layer}, filter {'on' if self.filter else 'off'})"
