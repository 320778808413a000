"""Run sweep points locally (joblib) or on Dask, caching each finished point as one JSON file."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wquant import __version__
from wquant.errors import ParameterError
from wquant.io import write_atomic
from wquant.sweep.config import SweepConfig

CONNECT_TIMEOUT_S = 10


def point_key(point: dict[str, Any]) -> str:
    blob = json.dumps([__version__, point], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def run_point(point: dict[str, Any]) -> dict[str, Any]:
    """Compute one point; importable by Dask workers (module-level, arguments and result plain data)."""
    kind = point["kind"]
    if kind == "formats":
        from wquant.formats.compare import compare_formats, sample_source

        report = compare_formats(
            sample_source(point["dist"], point["n"], point["seed"]), [point["spec"]], point["dist"]
        )[0]
        return {"spec": report.spec, "bits_per_param": report.bits_per_param, "rel_mse": report.rel_mse,
                "sqnr_db": report.sqnr_db, "gap_bits": report.gap_bits}  # fmt: skip
    if kind == "theory":
        from wquant.errors import ConvergenceError
        from wquant.theory.quantizers import make_levels
        from wquant.theory.rs import solve_rs
        from wquant.theory.setting import RegressionSetting

        setting = RegressionSetting(point["alpha"], point["sigma"], point["lam"], point["beta"])
        levels = make_levels(point["quantizer"], point["bits"], point["widths"])
        try:
            rs = solve_rs(setting, levels)
        except ConvergenceError:
            return {"converged": False}
        return {"converged": True, "gen_error": rs.gen_error, "train_error": rs.train_error,
                "at_value": rs.at_value, "rs_stable": bool(rs.rs_stable)}  # fmt: skip
    if kind == "model":
        import copy

        from wquant.evaluate import compare_encoders
        from wquant.models import QuantizeConfig, load_pretrained, model_bits, quantize_model
        from wquant.study.sentences import SENTENCES

        loaded = load_pretrained(point["model"])
        quantized = quantize_model(copy.deepcopy(loaded.model), QuantizeConfig(point["spec"], targets=("linear",)))
        texts = list(SENTENCES)[: point["texts"]]
        result = compare_encoders(loaded.model, quantized, loaded.tokenizer, texts, max_length=loaded.max_length)
        return {"bits_per_param": model_bits(quantized).bits_per_param, "mean_cosine": result.mean_cosine,
                "neighbour_agreement": result.neighbour_agreement}  # fmt: skip
    raise ParameterError(f"unknown sweep point kind {kind!r}")


@dataclass(frozen=True)
class SweepResult:
    table: Path
    rows: tuple[dict[str, Any], ...]
    computed: int
    cached: int


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    scheduler: str | None = None,
    point_fn: Callable[[dict[str, Any]], dict[str, Any]] = run_point,
    progress: bool = True,
) -> SweepResult:
    """Run every point not cached under OUT/points/, then write OUT/results.csv (one tidy row per point)."""
    out = Path(out)
    cache_dir = out / "points"
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"cannot create {cache_dir}: {exc.strerror or exc}") from None
    points = config.points()
    keys = [point_key(p) for p in points]
    todo = [(k, p) for k, p in zip(keys, points, strict=True) if not (cache_dir / f"{k}.json").is_file()]

    def finish(key: str, point: dict[str, Any], result: dict[str, Any]) -> None:
        write_atomic(cache_dir / f"{key}.json", json.dumps({"point": point, "result": result}))

    if todo:
        if scheduler:
            _run_dask(todo, scheduler, point_fn, finish)
        else:
            _run_local(todo, config.jobs, point_fn, finish, progress)
    rows = []
    for key, point in zip(keys, points, strict=True):
        stored = json.loads((cache_dir / f"{key}.json").read_text())
        rows.append({**{k: v for k, v in point.items() if k != "kind"}, **stored["result"]})
    table = write_table(out / "results.csv", rows)
    return SweepResult(table, tuple(rows), len(todo), len(points) - len(todo))


def _run_local(todo, jobs, point_fn, finish, progress) -> None:  # type: ignore[no-untyped-def]
    from joblib import Parallel, delayed
    from rich.progress import Progress

    batch = max(1, jobs)
    with Progress(disable=not progress) as bar:
        task = bar.add_task("sweep", total=len(todo))
        for start in range(0, len(todo), batch):  # finished points are saved batch by batch: resumable
            chunk = todo[start : start + batch]
            results = Parallel(n_jobs=jobs)(delayed(point_fn)(p) for _, p in chunk)
            for (key, point), result in zip(chunk, results, strict=True):
                finish(key, point, result)
            bar.advance(task, len(chunk))


def _run_dask(todo, scheduler, point_fn, finish) -> None:  # type: ignore[no-untyped-def]
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise ParameterError("--scheduler needs dask.distributed: pip install 'wquant[dask]'") from None
    try:
        client = Client(scheduler, timeout=CONNECT_TIMEOUT_S)
    except (OSError, TimeoutError) as exc:
        raise ParameterError(
            f"no Dask scheduler answered at {scheduler} within {CONNECT_TIMEOUT_S} s ({exc}); check the address"
        ) from None
    with client:
        futures = {client.submit(point_fn, point, pure=False): (key, point) for key, point in todo}
        for future in as_completed(futures):
            key, point = futures[future]
            finish(key, point, future.result())


def write_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()})
    return write_atomic(path, buffer.getvalue())
