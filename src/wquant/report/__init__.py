"""Figures and reports: presentation on top of formats, theory, models and evaluation."""
