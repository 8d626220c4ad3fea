"""Model Tinting and layer-wise AdaMerging: learn per-layer, per-task merging coefficients (and, for
Tinting, one tinted layer per task) on unlabeled images.

Modules: `model` (TintedMerge, the losses), `config` (TintConfig), `data` (images, pseudo-labels,
diagnostics), `run` (the schedule, `tint`, resume), `export`, `baselines` (the comparison),
`job` (TintJob for the app), `cli` (`python -m core tint`). Method notes: docs/methods/tinting.md.
"""
