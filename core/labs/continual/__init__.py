"""The Continual lab: continual learning with adapters on a frozen backbone, seen through the NTK (NTK-CL).

- `config`: `ContinualConfig` (the terms expansion / ortho / l2 and the settings);
- `peft`: the PEFT modules (adapter, LoRA, prompt generator, fusion) and the hooked frozen backbone;
- `terms`: EMA of past modules, orthogonality to past prototypes, L2 to the previous task;
- `model`: the continual model (backbone + PEFT sets + prototypes) and the training head;
- `data`: a task's preprocessed images; `metrics`: the accuracy matrix, average accuracy, forgetting;
- `diagnostics`: principal angles between task feature subspaces and the empirical NTK;
- `result`: `ContinualResult` and the logged runs; `run`: `run_continual`;
- `compare`: variants x seeds and the Markdown table; `job`: `ContinualJob`; `cli`: ``python -m core continual``.

Method notes (terms, defaults, where this differs from the official code): docs/methods/continual.md.
"""
