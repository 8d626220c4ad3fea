"""What validation found, grouped by kind: the most serious kinds first, a count and a few examples each.

An `Issue` is one finding (one file, one tensor). A `ValidationReport` groups issues by
`KINDS` — in that order, errors before warnings — so a shape mismatch is never buried under
a hundred lines of missing keys, and `summary()` renders it as text (CLI, logs, the Models page).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    """One problem found by validation; `level` is "error" (cannot merge) or "warning".

    `kind` is a key of `KINDS` ("" for an issue built by hand); `key` names the tensor
    ("" when the issue concerns the whole file).
    """

    level: str
    file: str
    key: str
    message: str
    kind: str = ""

    def __str__(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass(frozen=True)
class Kind:
    level: str  # "error" or "warning"
    title: str
    unit: str  # what `count` counts: "file" or "tensor"
    hint: str  # what to do about it


# The order is the order of seriousness: a report lists its groups in this order.
KINDS: dict[str, Kind] = {
    "unreadable": Kind(
        "error",
        "Could not read the checkpoints",
        "file",
        "Check the path; if the file was copied or downloaded, do it again (it may be cut short or not a "
        "checkpoint at all).",
    ),
    "architecture": Kind(
        "error",
        "Another architecture than the base",
        "file",
        "Its tensors do not match the base's (other blocks or other layers): it was not fine-tuned from this "
        "base. Choose the base it was fine-tuned from, or drop it from the set.",
    ),
    "shape": Kind(
        "error",
        "Shape mismatch",
        "tensor",
        "The same tensors have other shapes than in the base: a model of another size (width), not a fine-tune "
        "of this base. Use checkpoints fine-tuned from this base.",
    ),
    "nonfinite": Kind(
        "error",
        "Non-finite values (NaN/Inf)",
        "tensor",
        "The fine-tune diverged or the file is damaged; re-export or re-train it. Task vectors and merges "
        "would carry the NaN/Inf.",
    ),
    "dtype": Kind(
        "error",
        "Incompatible dtype",
        "tensor",
        "A floating-point tensor in one file is an integer tensor in the other: they are not the same tensor.",
    ),
    "missing_key": Kind(
        "error",
        "Missing tensors",
        "tensor",
        "The fine-tuned checkpoint lacks tensors the base has in the same tower; save the whole state dict.",
    ),
    "extra_key": Kind(
        "error",
        "Tensors not in the base",
        "tensor",
        "No task vector can be computed for them: was it fine-tuned from a different base?",
    ),
    "no_blocks": Kind(
        "warning",
        "No transformer blocks found",
        "file",
        "It loads, but there are no keys like 'visual.transformer.resblocks.0.*': per-block views, LiNeS and "
        "layer-wise merges will have nothing to work on. Is it an open_clip / HF CLIP ViT?",
    ),
    "extra_buffer": Kind(
        "warning",
        "Extra buffers",
        "tensor",
        "Non-float buffers the base lacks; merges skip them.",
    ),
    "dtype_cast": Kind(
        "warning",
        "Different precision",
        "tensor",
        "Precisions differ (e.g. float16 vs float32); values are cast to the base's dtype.",
    ),
    "": Kind("error", "Other problems", "tensor", "See the messages."),
}


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class ProblemGroup:
    """All issues of one kind: a headline with counts, the hint, and the messages."""

    kind: str
    issues: tuple[Issue, ...]

    @property
    def spec(self) -> Kind:
        return KINDS.get(self.kind, KINDS[""])

    @property
    def level(self) -> str:
        return self.spec.level

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def hint(self) -> str:
        return self.spec.hint

    @property
    def files(self) -> list[str]:
        return list(dict.fromkeys(i.file for i in self.issues))

    @property
    def count(self) -> int:
        """How many files (file-level kinds) or tensors (tensor-level kinds) the kind hits."""
        if self.spec.unit == "file":
            return len(self.files)
        return len({(i.file, i.key) for i in self.issues})

    def headline(self) -> str:
        """E.g. "Shape mismatch: 40 tensors in 1 file"."""
        if self.spec.unit == "file":
            return f"{self.title}: {_plural(self.count, 'file')}"
        return f"{self.title}: {_plural(self.count, self.spec.unit)} in {_plural(len(self.files), 'file')}"

    def examples(self, n: int = 3) -> list[str]:
        """The first `n` messages, taking one per file first so every file shows up."""
        first, rest, seen = [], [], set()
        for i in self.issues:
            (rest if i.file in seen else first).append(i.message)
            seen.add(i.file)
        return (first + rest)[:n]

    def more(self, n: int = 3) -> int:
        """How many messages `examples(n)` leaves out."""
        return max(len(self.issues) - n, 0)


@dataclass(frozen=True)
class ValidationReport:
    """The result of `validate_model_set`: every issue, grouped by kind for display.

    `files` maps roles ("base", task names) to paths; `checked_finite` says whether every
    value was read (NaN/Inf check) or only the headers.
    """

    issues: tuple[Issue, ...]
    files: dict[str, str] = field(default_factory=dict)
    checked_finite: bool = True

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.level == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.level != "error"]

    @property
    def ok(self) -> bool:
        """True when there is no error (warnings allowed)."""
        return not self.errors

    @property
    def groups(self) -> list[ProblemGroup]:
        """One group per kind present, most serious first (the order of `KINDS`; errors before warnings)."""
        order = list(KINDS)
        kinds = sorted({i.kind for i in self.issues}, key=lambda k: order.index(k) if k in order else len(order))
        groups = [ProblemGroup(k, tuple(i for i in self.issues if i.kind == k)) for k in kinds]
        return sorted(groups, key=lambda g: g.level != "error")  # stable: keeps the KINDS order within a level

    def headline(self) -> str:
        n = len(self.files)
        what = f"{_plural(n, 'checkpoint')}" + ("" if self.checked_finite else ", headers only")
        if not self.issues:
            return f"All checkpoints match the base ({what}): same keys and shapes" + (
                ", finite values." if self.checked_finite else "."
            )
        errs = [g for g in self.groups if g.level == "error"]
        warns = [g for g in self.groups if g.level != "error"]
        if errs:
            return f"The model set cannot be used ({what}): " + "; ".join(g.headline() for g in errs) + "."
        return f"The model set can be used, with warnings ({what}): " + "; ".join(g.headline() for g in warns) + "."

    def summary(self, examples: int = 3) -> str:
        """The report as text: the headline, then each group (headline, hint, a few messages)."""
        lines = [self.headline()]
        for g in self.groups:
            lines.append(f"{g.level.upper()} {g.headline()}. {g.hint}")
            lines += [f"  - {m}" for m in g.examples(examples)]
            if g.more(examples):
                lines.append(f"  ... and {g.more(examples)} more of this kind")
        return "\n".join(lines)
