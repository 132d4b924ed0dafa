"""haste_lab: the measurement side of haste (evaluation, sweeps, calibration of levels, benchmarks,
training of the reference models, plots, datasets). It imports the library (``haste``); the library never
imports it. Reached through the ``haste`` command (``haste evaluate|sweep|calibrate|bench|train``) and
installed with the ``lab`` extra (matplotlib)."""
