"""The Fine-tune lab: low-data fine-tuning with TempBalance / Model Balancing and Weight Scope Alignment.

- `config`: method names (a learning-rate rule, optionally "+wsa") and `LabConfig`;
- `data`: seeded class-balanced low-data splits (disjoint shards) and the lab's evaluators;
- `terms`: Weight Scope Alignment as a training hook (the lr rules are `core.tempbalance`);
- `run`: one fine-tune (`finetune`) and a grid of them (`run_grid`);
- `compare`: the grid's mean ± std table and its Markdown;
- `wsa`: two fine-tunes with and without WSA, their loss barrier and task-arithmetic merge;
- `export`: lab fine-tunes saved and added to a model set;
- `job`: `LabJob`, the page's background job; `cli`: ``python -m core finetune``.

Method notes (formulas, defaults, the official code followed): docs/methods/finetune.md.
"""
