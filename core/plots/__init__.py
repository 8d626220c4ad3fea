"""Figures: pure functions from pandas tables (and arrays) to plotly Figures.

No Streamlit here: pages call these, tests call them directly. One submodule per area,
imported by its full name (nothing is re-exported here):

- ``core.plots.analysis``  task-vector norms, cosine and sign conflicts, spectra (per-layer α,
  ESD with its power-law fit), TempBalance/Model Balancing multipliers, weight scopes;
- ``core.plots.merge``     merge results, LiNeS curves and sweeps;
- ``core.plots.training``  training curves and continual-learning matrices.
"""
