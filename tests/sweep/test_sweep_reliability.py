"""Sweeps trust nothing they did not just compute: damaged or edited cache entries are recomputed, scheduler
addresses are checked for form, and the example config in `wquant sweep --help` runs as pasted."""

from __future__ import annotations

import csv
import json
import tomllib

import pytest
from typer.testing import CliRunner

from wquant.cli.main import app
from wquant.errors import ParameterError
from wquant.sweep import load_sweep_config, run_sweep
from wquant.sweep.config import parse_sweep_config
from wquant.sweep.run import point_key
from wquant.sweep.scheduler import scheduler_address

GRID = {"sweep": {"kind": "theory"}, "theory": {"bits": [2, 3], "widths": [1.0, 2.0]}}


def fake_point(point):
    """Stands in for the RS solver: cheap, and a known function of the point."""
    return {"value": point["bits"] * 10 + point["widths"], "ok": True}


def counting(calls):
    return lambda point: calls.append(point) or fake_point(point)


def test_damaged_and_edited_entries_are_recomputed(tmp_path):
    config = parse_sweep_config(GRID)
    first = run_sweep(config, tmp_path, point_fn=fake_point, progress=False)
    files = sorted((tmp_path / "points").glob("*.json"))
    assert len(files) == 4 and first.computed == 4
    by_bits_width = {(p["bits"], p["widths"]): tmp_path / "points" / f"{point_key(p)}.json" for p in config.points()}

    by_bits_width[2, 1.0].write_text('{"point": {"bits": 2')  # truncated JSON
    by_bits_width[2, 2.0].write_bytes(b"\x00\xff\xfe garbage")  # not even UTF-8
    edited = json.loads(by_bits_width[3, 1.0].read_text())
    edited["result"]["value"] = 999.0  # a hand edit that keeps the JSON valid
    by_bits_width[3, 1.0].write_text(json.dumps(edited))
    unchecked = {"point": edited["point"], "result": {"value": 1.0, "ok": True}}  # no checksum (older wquant)
    by_bits_width[3, 2.0].write_text(json.dumps(unchecked))

    calls = []
    second = run_sweep(config, tmp_path, point_fn=counting(calls), progress=False)
    assert (second.computed, second.cached, second.damaged, len(calls)) == (4, 0, 4, 4)
    assert second.rows == first.rows
    with open(second.table, newline="") as fh:
        assert [float(r["value"]) for r in csv.DictReader(fh)] == [r["value"] for r in first.rows]
    assert 999.0 not in [r["value"] for r in second.rows]

    calls.clear()
    third = run_sweep(config, tmp_path, point_fn=counting(calls), progress=False)
    assert (third.computed, third.cached, third.damaged, calls) == (0, 4, 0, [])


def test_entry_of_another_point_or_version_is_not_reused(tmp_path, monkeypatch):
    config = parse_sweep_config(GRID)
    run_sweep(config, tmp_path, point_fn=fake_point, progress=False)
    a, b = (tmp_path / "points" / f"{point_key(p)}.json" for p in config.points()[:2])
    b.write_bytes(a.read_bytes())  # intact, checksummed, but computed for point a
    calls = []
    result = run_sweep(config, tmp_path, point_fn=counting(calls), progress=False)
    assert (result.computed, result.damaged) == (1, 1) and calls == [config.points()[1]]

    import wquant.sweep.run as run_module

    monkeypatch.setattr(run_module, "__version__", "0.0.0-other")  # a new wquant: every key and digest changes
    calls.clear()
    assert run_sweep(config, tmp_path, point_fn=counting(calls), progress=False).computed == 4


def test_example_config_in_help_runs_as_pasted(tmp_path):
    runner = CliRunner()
    help_text = runner.invoke(app, ["sweep", "--help"], terminal_width=80).stdout
    lines = [line.strip() for line in help_text.splitlines()]
    start = next(i for i, line in enumerate(lines) if line.startswith("Example config"))
    end = lines.index("Examples:")
    example = "\n".join(lines[start + 1 : end]) + "\n"
    assert "[sweep]" in example and "[formats]" in example, example
    parsed = tomllib.loads(example)  # valid TOML as printed
    path = tmp_path / "grid.toml"
    path.write_text(example)
    assert len(load_sweep_config(path).points()) == 8
    # the same file on a tiny grid: fewer samples, one process, one source
    tiny = tmp_path / "tiny.toml"
    parsed["sweep"]["jobs"], parsed["formats"]["n"], parsed["formats"]["dist"] = 1, 4096, ["normal"]
    tiny.write_text(_toml(parsed))
    result = runner.invoke(app, ["sweep", str(tiny), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "4 points computed" in result.stdout
    with open(tmp_path / "out" / "results.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["spec"].split("/")[0] for r in rows} >= {"int3", "int4"} and all(float(r["rel_mse"]) > 0 for r in rows)


def _toml(data):
    """Two-level tables of scalars and lists of scalars, which is all a sweep config holds."""
    lines = []
    for table, values in data.items():
        lines.append(f"[{table}]")
        lines += [f"{key} = {json.dumps(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "text,expected",
    [
        ("tcp://10.0.0.5:8786", "tcp://10.0.0.5:8786"),
        ("10.0.0.5:8786", "tcp://10.0.0.5:8786"),
        (" scheduler.local:8786 ", "tcp://scheduler.local:8786"),
        ("tls://node-1:8786", "tls://node-1:8786"),
        ("TCP://[::1]:8786", "tcp://[::1]:8786"),
        ("ws://127.0.0.1:8786", "ws://127.0.0.1:8786"),
    ],
)
def test_scheduler_addresses_distributed_accepts(text, expected):
    assert scheduler_address(text) == expected


@pytest.mark.parametrize(
    "text,match",
    [
        ("foo", "not a Dask scheduler address"),
        ("", "not a Dask scheduler address"),
        ("tcp://", "not a Dask scheduler address"),
        ("http://", "not a Dask scheduler address"),
        ("tcp://host", "not a Dask scheduler address"),
        ("tcp://host:0", "not a Dask scheduler address"),
        ("tcp://host:65536", "not a Dask scheduler address"),
        ("tcp://host:port", "not a Dask scheduler address"),
        ("tcp://a b:1", "not a Dask scheduler address"),
        ("http://127.0.0.1:8787", "the dashboard"),
        ("inproc://127.0.0.1:1", "inproc:// is not one of tcp://, tls://, ws://, wss://"),
    ],
)
def test_malformed_scheduler_addresses_are_refused(text, match):
    with pytest.raises(ParameterError, match=match):
        scheduler_address(text)


@pytest.mark.parametrize("key", ["bits", "widths", "alpha", "quantizer"])
def test_empty_theory_axis_is_refused_by_name(key):
    with pytest.raises(ParameterError, match=rf"\[theory\] {key} is empty"):
        parse_sweep_config({"sweep": {"kind": "theory"}, "theory": {key: []}})
