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
from wquant.io import check_writable_dir, write_atomic
from wquant.sweep.config import SweepConfig
from wquant.sweep.scheduler import connect_scheduler, scheduler_address


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
        from wquant.models import load_pretrained, model_bits, quantize_
        from wquant.study.sentences import SENTENCES

        loaded = load_pretrained(point["model"])
        quantized = copy.deepcopy(loaded.model)
        quantize_(quantized, point["spec"])
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
    damaged: int = 0  # cache entries that failed their check and were recomputed (counted in computed)


def entry_digest(key: str, point: dict[str, Any], result: dict[str, Any]) -> str:
    """sha256 over wquant's version, the point (and its key) and the result: a cache entry is trusted only for
    the point it was computed for, by this version, unedited."""
    blob = json.dumps([__version__, key, point, result], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def encode_entry(key: str, point: dict[str, Any], result: dict[str, Any]) -> str:
    entry = {"version": __version__, "key": key, "point": point, "result": result}
    return json.dumps({**entry, "sha256": entry_digest(key, point, result)}, sort_keys=True)


def read_entry(path: Path, key: str, point: dict[str, Any]) -> dict[str, Any] | None:
    """The cached result of `point`, or None when the entry is missing, unreadable, edited or someone else's."""
    try:
        entry = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError):  # missing, unreadable, not UTF-8 JSON, absurdly nested
        return None
    if not isinstance(entry, dict) or not isinstance(result := entry.get("result"), dict):
        return None
    return result if entry.get("sha256") == entry_digest(key, point, result) else None


def run_sweep(
    config: SweepConfig,
    out: str | Path,
    *,
    scheduler: str | None = None,
    point_fn: Callable[[dict[str, Any]], dict[str, Any]] = run_point,
    progress: bool = True,
) -> SweepResult:
    """Run every point without a valid entry under OUT/points/, then write OUT/results.csv (one row per point).

    The address and the output folder are checked, and the scheduler verified, before anything is created.
    """
    address = scheduler_address(scheduler) if scheduler is not None else None
    out = check_writable_dir(out)
    cache_dir = check_writable_dir(out / "points")
    points = config.points()
    keys = [point_key(p) for p in points]
    results: dict[str, dict[str, Any]] = {}
    todo: dict[str, dict[str, Any]] = {}
    damaged = 0
    for key, point in zip(keys, points, strict=True):
        if key in results or key in todo:  # a point listed twice is computed once
            continue
        path = cache_dir / f"{key}.json"
        if (stored := read_entry(path, key, point)) is not None:
            results[key] = stored
        else:
            todo[key] = point
            damaged += path.exists()

    def finish(key: str, point: dict[str, Any], result: dict[str, Any]) -> None:
        blob = encode_entry(key, point, result)
        write_atomic(cache_dir / f"{key}.json", blob)
        results[key] = json.loads(blob)["result"]  # the row holds what a rerun reads back from the cache

    if todo:
        if address is not None:
            with connect_scheduler(address) as client:
                _make_dir(cache_dir)
                _run_dask(client, list(todo.items()), point_fn, finish)
        else:
            _make_dir(cache_dir)
            _run_local(list(todo.items()), config.jobs, point_fn, finish, progress)
    rows = [{**{k: v for k, v in point.items() if k != "kind"}, **results[key]}
            for key, point in zip(keys, points, strict=True)]  # fmt: skip
    table = write_table(out / "results.csv", rows)
    return SweepResult(table, tuple(rows), len(todo), len(set(keys)) - len(todo), damaged)


def _make_dir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ParameterError(f"cannot create {folder}: {exc.strerror or exc}; choose another --out") from None


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


def _run_dask(client, todo, point_fn, finish) -> None:  # type: ignore[no-untyped-def]
    from distributed import as_completed

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
