"""Figures: pure functions from pandas tables (and arrays) to plotly Figures.

No Streamlit here: pages call these, tests call them directly. One submodule per area,
imported by its full name (nothing is re-exported here):

- ``core.plots.analysis``  task-vector norms, cosine and sign conflicts, spectra (per-layer α,
  ESD with its power-law fit), TempBalance/Model Balancing multipliers, weight scopes;
- ``core.plots.merge``, ``core.plots.sweeps``, ``core.plots.training``, ``core.plots.tinting``,
  ``core.plots.continual``: the figures of the Steer and Train pages (their authors' modules).
"""
