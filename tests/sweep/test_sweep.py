"""Sweeps: the same table locally and on a real Dask cluster, resume after a crash, config errors."""

from __future__ import annotations

import math

import pytest

from wquant.errors import ParameterError
from wquant.sweep import load_sweep_config, run_sweep
from wquant.sweep.config import parse_sweep_config
from wquant.sweep.run import run_point

FORMATS_GRID = {
    "sweep": {"kind": "formats", "jobs": 2},
    "formats": {"dist": ["normal", "laplace"], "formats": ["int{bits}/block64:absmax:bf16", "nf4"], "bits": [3, 4],
                "n": 2**14},
}  # fmt: skip
THEORY_GRID = {"sweep": {"kind": "theory"}, "theory": {"bits": [2, 3], "widths": [1.0, 2.0], "alpha": 0.5,
               "sigma": 0.1, "beta": 5.0}}  # fmt: skip


def test_formats_grid_expands_templates_and_matches_direct_computation(tmp_path):
    config = parse_sweep_config(FORMATS_GRID)
    result = run_sweep(config, tmp_path, progress=False)
    assert result.computed == 2 * 3 and result.cached == 0  # (int3, int4, nf4) × 2 sources
    row = next(r for r in result.rows if r["spec"] == "int4/block64:absmax:bf16" and r["dist"] == "normal")
    assert row["bits_per_param"] == 4.25
    # Gaussian bound, independent of the sweep: gap = bits - ½·log2(1/D)
    assert math.isclose(row["gap_bits"], 4.25 - 0.5 * math.log2(1 / row["rel_mse"]), abs_tol=0.02)


def test_theory_grid_reports_rs_points(tmp_path):
    result = run_sweep(parse_sweep_config(THEORY_GRID), tmp_path, progress=False)
    assert len(result.rows) == 4 and all(r["converged"] for r in result.rows)
    # theory.md §10 reference point: M/N = 2 (alpha = N/M = 0.5), b = 2, ω = 1, β = 5 → AT 0.2754
    point = next(r for r in result.rows if r["bits"] == 2 and r["widths"] == 1.0)
    assert point["at_value"] == pytest.approx(0.2754, abs=2e-3) and point["rs_stable"]


def test_interrupted_sweep_recomputes_only_missing_points(tmp_path):
    config = parse_sweep_config({**THEORY_GRID, "sweep": {"kind": "theory", "jobs": 1}})
    calls = []

    def dies_after_two(point):
        if len(calls) == 2:
            raise KeyboardInterrupt  # the process is killed here
        calls.append(point)
        return run_point(point)

    with pytest.raises(KeyboardInterrupt):
        run_sweep(config, tmp_path, point_fn=dies_after_two, progress=False)
    calls.clear()
    resumed = run_sweep(config, tmp_path, point_fn=lambda p: calls.append(p) or run_point(p), progress=False)
    assert (resumed.computed, resumed.cached, len(calls)) == (2, 2, 2)
    fresh = run_sweep(config, tmp_path / "fresh", progress=False)
    assert [r["at_value"] for r in resumed.rows] == [r["at_value"] for r in fresh.rows]


def test_dask_local_cluster_gives_the_same_table(tmp_path):
    distributed = pytest.importorskip("distributed")
    config = parse_sweep_config(FORMATS_GRID)
    local = run_sweep(config, tmp_path / "local", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:  # fmt: skip
        remote = run_sweep(config, tmp_path / "dask", scheduler=cluster.scheduler_address, progress=False)
        worker = next(iter(cluster.scheduler_info["workers"]))
        with pytest.raises(ParameterError, match=r"is a Dask Worker, not a scheduler"):
            run_sweep(config, tmp_path / "worker", scheduler=worker, progress=False)
    assert not (tmp_path / "worker").exists()
    assert remote.computed == len(local.rows)
    assert remote.rows == local.rows


def test_unanswering_scheduler_fails_within_the_timeout(tmp_path):
    pytest.importorskip("distributed")
    import time

    start = time.monotonic()
    with pytest.raises(ParameterError, match="no Dask scheduler answered"):
        run_sweep(parse_sweep_config(THEORY_GRID), tmp_path / "out", scheduler="tcp://127.0.0.1:9", progress=False)
    assert time.monotonic() - start < 10
    assert not (tmp_path / "out").exists()  # refused before anything was created


@pytest.mark.parametrize(
    "text,match",
    [
        ('[sweep]\nkind = "formats"\ncolour = 1\n', r"\['colour'\] in \[sweep\]; valid keys: jobs, kind, seed"),
        ('[sweep]\nkind = "movies"\n', "is not one of: formats, theory, model"),
        ('[sweep]\nkind = "theory"\n[theory]\nwidth = [1]\n', r"\['width'\] in \[theory\]; valid keys: alpha"),
        ('[sweep]\nkind = "formats"\n[formats]\nformats = ["int{bits}/rows"]\n', "valid: tensor, channel, block<B>"),
        ("[sweep\n", "not valid TOML"),
    ],
)  # fmt: skip
def test_bad_configs_list_what_is_valid(tmp_path, text, match):
    path = tmp_path / "grid.toml"
    path.write_text(text)
    with pytest.raises(ParameterError, match=match):
        load_sweep_config(path)
