"""Fits of end-of-training quantities against log10(eta/S). Pure functions over Arrow tables."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from scipy import stats


@dataclass(frozen=True)
class RatioFit:
    """y = intercept + slope * log10(eta/S), least squares over trials.

    ``slope_ci`` is a 95% percentile bootstrap interval over seeds: each replicate redraws, for
    every (lr, batch_size) point, its seeds with replacement, so the interval reflects seed
    spread, not only the scatter between points.
    """
    metric: str
    x: str
    n: int                  # trials in the fit
    n_excluded: int         # trials without a finite value (e.g. diverged)
    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    r2: float
    spearman_rho: float
    spearman_p: float
    n_boot: int

    def to_dict(self) -> dict:
        return asdict(self)


def _finite(values) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=float)


def ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, intercept and R^2 of y on x (nan where x has no spread)."""
    if len(x) < 2 or np.ptp(x) < 1e-9:  # no spread, up to float rounding
        return math.nan, math.nan, math.nan
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(resid ** 2)) / ss_tot if ss_tot > 0 else math.nan
    return float(slope), float(intercept), r2


def _bootstrap_slopes(x: np.ndarray, y: np.ndarray, members: list[list[int]], n_boot: int,
                      rng: np.random.Generator, block: int = 100) -> list[float]:
    """OLS slopes of y on x over ``n_boot`` resamples, each drawing with replacement within every
    group of rows (``members``: the seeds of one point), as many rows as the group has.
    Vectorized: ``block`` resamples at a time as rows of a matrix (a 10,000-trial sweep's fit
    takes a second, not minutes)."""
    if not members or n_boot <= 0:
        return []
    order = np.concatenate([np.asarray(rows, dtype=np.int64) for rows in members])
    sizes = np.array([len(rows) for rows in members], dtype=np.int64)
    start = np.repeat(np.cumsum(sizes) - sizes, sizes)  # per position: where its group starts in ``order``
    size = np.repeat(sizes, sizes)
    slopes: list[float] = []
    for done in range(0, n_boot, block):
        k = min(block, n_boot - done)
        idx = order[start + rng.integers(0, size, size=(k, len(order)))]
        xs, ys = x[idx], y[idx]
        dx = xs - xs.mean(axis=1, keepdims=True)
        sxx = (dx * dx).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            b = np.where(sxx > 0, (dx * (ys - ys.mean(axis=1, keepdims=True))).sum(axis=1) / sxx, np.nan)
        slopes += [float(v) for v in b if math.isfinite(v)]
    return slopes


def ratio_fit(trials: pa.Table, metric: str, *, log_y: bool = False, n_boot: int = 1000,
              seed: int = 0, groups: tuple[str, ...] = ("lr", "batch_size")) -> RatioFit:
    """Fit ``metric`` (or log10 of it with ``log_y``) against log10(ratio) across trials."""
    x_all = np.log10(_finite(trials.column("ratio").to_pylist()))
    y_all = _finite(trials.column(metric).to_pylist())
    if log_y:
        with np.errstate(divide="ignore", invalid="ignore"):
            y_all = np.where(y_all > 0, np.log10(y_all), np.nan)
    ok = np.isfinite(x_all) & np.isfinite(y_all)
    x, y = x_all[ok], y_all[ok]
    slope, intercept, r2 = ols(x, y)
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        rho, p = stats.spearmanr(x, y)
        rho, p = float(rho), float(p)
    else:
        rho = p = math.nan

    # Bootstrap over seeds within each point.
    keys = list(zip(*(trials.column(g).to_pylist() for g in groups)))
    point_rows: dict[tuple, list[int]] = {}
    for i, key in enumerate(np.array(keys, dtype=object)[ok] if len(keys) else []):
        point_rows.setdefault(tuple(key), []).append(i)
    slopes = _bootstrap_slopes(x, y, list(point_rows.values()), n_boot, np.random.default_rng(seed))
    ci = (float(np.percentile(slopes, 2.5)), float(np.percentile(slopes, 97.5))) if slopes else (math.nan, math.nan)
    return RatioFit(metric=("log10 " if log_y else "") + metric, x="log10(lr/batch_size)", n=int(ok.sum()),
                    n_excluded=int((~ok).sum()), slope=slope, intercept=intercept, slope_ci=ci, r2=r2,
                    spearman_rho=rho, spearman_p=p, n_boot=len(slopes))
