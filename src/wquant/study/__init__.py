"""The main job, `wquant study`: profile → formats vs R(D) → theory → plan → evaluate → report (pipeline.py)."""
