"""Fits of end-of-training quantities against log10(eta/S), over the design's replication unit.

The unit is a point (lr, S, and the family labels that make two runs different configurations),
not a seed: the seeds of one point share everything but their randomness, so they are not
independent draws of the relation between eta/S and the metric. A slope against eta/S is
uncertain mostly through the scatter between points (a point can sit off the line for reasons
other than eta/S), which resampling seeds within points never sees. So every fit here first
averages each point's seeds, then fits the point means:

* slope and intercept: least squares of the point means on log10(eta/S) (every point weighs the
  same, however many seeds it has);
* ``slope_ci``: the 95% t interval of that slope with n_points - 2 degrees of freedom (exact for
  normal point effects plus seed noise with equal seeds per point; ``ci_method``);
* p: two-sided t-test of slope = 0 on the same fit; Spearman's rho and its p over the point
  means (``n_points`` says how many).

No interval is given (``slope_ci`` is (nan, nan) and ``ci_note`` says why) with fewer than 3
distinct eta/S values or fewer than 4 points (2 degrees of freedom). Equal-eta/S points stay
separate points. Pure functions over Arrow tables.
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import pyarrow as pa
from scipy import stats

from lrbs.analysis.stats import OLSResult, simple_fit

CI_METHOD = "t interval on point means (n_points - 2 dof)"
# What tells two trials apart as points of the design, beyond their seed (those present in the table).
POINT_KEYS = ("lr", "batch_size", "n_train", "beta", "rescale", "variant", "schedule")
MIN_RATIOS = 3  # distinct eta/S values for an interval
MIN_POINTS = 4  # points for an interval (n_points - 2 >= 2 dof)


@dataclass(frozen=True)
class PointMeans:
    """Per-point means of x and y over the seeds with finite values, in first-seen order."""

    keys: list[tuple[Any, ...]]
    x: np.ndarray
    y: np.ndarray
    n_seeds: np.ndarray  # trials averaged into each point

    @property
    def n_trials(self) -> int:
        return int(self.n_seeds.sum())


def point_means(keys: Sequence[tuple[Any, ...]], x: np.ndarray, y: np.ndarray) -> PointMeans:
    """Average x and y over the rows of each key (rows with a non-finite x or y are dropped)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    code: dict[tuple[Any, ...], int] = {}
    idx = np.array([code.setdefault(tuple(k), len(code)) for k, good in zip(keys, ok) if good], dtype=np.int64)
    n = len(code)
    counts = np.bincount(idx, minlength=n).astype(float)
    with np.errstate(invalid="ignore"):
        mx = np.bincount(idx, weights=x[ok], minlength=n) / counts
        my = np.bincount(idx, weights=y[ok], minlength=n) / counts
    return PointMeans(keys=list(code), x=mx, y=my, n_seeds=counts.astype(np.int64))


def _key_value(v: Any) -> Any:
    """A point-key value: floats to 12 significant digits (0.1 * 3 and 0.3 are one learning rate)."""
    return float(f"{v:.12g}") if isinstance(v, float) and math.isfinite(v) else v


def point_keys(trials: pa.Table) -> list[tuple[Any, ...]]:
    """Each trial's point: the values of ``POINT_KEYS`` present in the table."""
    cols = [[_key_value(v) for v in trials.column(k).to_pylist()] for k in POINT_KEYS if k in trials.column_names]
    return list(zip(*cols)) if cols else [()] * trials.num_rows


def n_distinct(x: np.ndarray) -> int:
    """Distinct values up to float rounding (12 significant digits of log10(eta/S))."""
    return len({round(float(v), 12) for v in x})


@dataclass(frozen=True)
class PointFit:
    """Least squares of point means on x, with the interval and tests over points."""

    slope: float
    intercept: float
    slope_ci: tuple[float, float]
    p: float  # two-sided, slope = 0, n_points - 2 dof
    r2: float  # of the point means
    spearman_rho: float  # over point means
    spearman_p: float
    n_points: int
    n_trials: int
    n_ratios: int  # distinct x values
    ci_method: str
    ci_note: str  # why there is no interval ("" when there is one)
    ols: OLSResult | None  # the point-mean fit (None when it could not be made)

    def shared(self, result: type[Any]) -> dict[str, Any]:
        """The values of the fields the dataclass ``result`` has too (slope, its interval, the
        tests, n_points, ci_note ...): a fit's result carries them over as they are."""
        return {f.name: getattr(self, f.name) for f in fields(result) if hasattr(self, f.name)}


EXACT_SPEARMAN_MAX = 8  # up to this many points, Spearman's p by enumerating every permutation


@functools.lru_cache(maxsize=8)
def _permutations(n: int) -> np.ndarray:
    return np.array(list(itertools.permutations(range(n))), dtype=np.int64)  # (n!, n)


def spearman(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Spearman's rho and its two-sided p (nan without 3 values and spread in both).

    With at most ``EXACT_SPEARMAN_MAX`` points the p-value is exact: the share of the n!
    pairings of the ranks (ties as average ranks) whose |rho| reaches the observed one. scipy's
    t approximation is far off there (it prints p = 0 for 4 perfectly ordered points, where the
    exact p is 1/12) and rejects 8% of null data sets at 4-5 points."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    r = stats.spearmanr(x, y)
    rho = float(r.statistic)
    if len(x) > EXACT_SPEARMAN_MAX:
        return rho, float(r.pvalue)
    rx, ry = stats.rankdata(x), stats.rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    rhos = ry[_permutations(len(x))] @ rx / denom  # every pairing's rho
    return rho, float(np.mean(np.abs(rhos) >= abs(rho) - 1e-12))


def fit_points(pm: PointMeans) -> PointFit:
    """The slope of ``pm.y`` on ``pm.x`` over points, with its t interval when the design allows one."""
    n, k = len(pm.x), n_distinct(pm.x)
    slope, intercept, ci, p, r2, fit = math.nan, math.nan, (math.nan, math.nan), math.nan, math.nan, None
    if k < 2:
        note = f"{k} distinct eta/S value(s): no slope"
    elif k < MIN_RATIOS:
        note = f"{k} distinct eta/S values: no interval (needs >= {MIN_RATIOS})"
    elif n < MIN_POINTS:
        note = f"{n} points: no interval (needs >= {MIN_POINTS}, i.e. 2 degrees of freedom)"
    else:
        note = ""
    if k >= 2 and n < 3:  # two points: a line through them, no residual to judge it by
        slope = float((pm.y[1] - pm.y[0]) / (pm.x[1] - pm.x[0]))
        intercept = float(pm.y[0] - slope * pm.x[0])
    elif k >= 2:
        fit = simple_fit(pm.x, pm.y)
        slope, intercept, r2 = float(fit.coef[1]), float(fit.coef[0]), fit.r2
        if not note and fit.rss <= 1e-20 * max(1.0, float(np.sum(pm.y**2))):
            note = "the point means lie exactly on a line (no scatter): no interval"
        if not note:
            lo, hi = fit.ci()[1]
            ci, p = (float(lo), float(hi)), float(fit.p_values()[1])
    rho, rho_p = spearman(pm.x, pm.y)
    return PointFit(
        slope=slope,
        intercept=intercept,
        slope_ci=ci,
        p=p,
        r2=r2,
        spearman_rho=rho,
        spearman_p=rho_p,
        n_points=n,
        n_trials=pm.n_trials,
        n_ratios=k,
        ci_method=CI_METHOD,
        ci_note=note,
        ols=fit,
    )


@dataclass(frozen=True)
class RatioFit:
    """y = intercept + slope * log10(eta/S) over point means (module docstring)."""

    metric: str
    x: str
    n: int  # trials in the fit
    n_excluded: int  # trials without a finite value (e.g. diverged)
    n_points: int  # points (seeds averaged) the slope, its interval and the tests are over
    n_ratios: int  # distinct eta/S values among them
    slope: float
    intercept: float
    slope_ci: tuple[float, float]  # (nan, nan) when no interval can be given: see ci_note
    p: float  # two-sided, slope = 0
    r2: float  # of the point means
    spearman_rho: float  # over point means
    spearman_p: float
    ci_method: str
    ci_note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_values(trials: pa.Table, metric: str, log_y: bool) -> np.ndarray:
    """The metric per trial as floats (nan for null; log10 of it with ``log_y``, nan where <= 0)."""
    y = np.array([np.nan if v is None else float(v) for v in trials.column(metric).to_pylist()], dtype=float)
    if log_y:
        with np.errstate(divide="ignore", invalid="ignore"):
            y = np.where(y > 0, np.log10(y), np.nan)
    return y


def ratio_fit(trials: pa.Table, metric: str, *, log_y: bool = False) -> RatioFit:
    """Fit ``metric`` (or log10 of it with ``log_y``) against log10(eta/S) over point means."""
    x, y = metric_values(trials, "ratio", True), metric_values(trials, metric, log_y)
    pm = point_means(point_keys(trials), x, y)
    f = fit_points(pm)
    return RatioFit(
        metric=("log10 " if log_y else "") + metric,
        x="log10(lr/batch_size)",
        n=pm.n_trials,
        n_excluded=trials.num_rows - pm.n_trials,
        **f.shared(RatioFit),
    )


def slope_text(slope: float | None, ci: tuple[float | None, float | None], note: str = "", digits: int = 3) -> str:
    """``slope [lo, hi]``, or ``slope (no CI: why)`` when the design allows no interval; None (in a
    fit as fits.json holds it) counts as nan."""
    s = f"{slope:.{digits}g}" if slope is not None and math.isfinite(slope) else "nan"
    if note or ci[0] is None or ci[1] is None or not (math.isfinite(ci[0]) and math.isfinite(ci[1])):
        return f"{s} (no CI: {note or 'undefined'})"
    return f"{s} [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
