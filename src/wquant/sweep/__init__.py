"""Sweeps: a grid of points (formats × bits × sources, theory settings, model × format), run locally with
joblib or on a Dask cluster, cached point by point so an interrupted sweep resumes."""

from wquant.sweep.config import SweepConfig, load_sweep_config
from wquant.sweep.run import SweepResult, run_sweep

__all__ = ["SweepConfig", "SweepResult", "load_sweep_config", "run_sweep"]
