"""Sharpness and generalization against eta/S (Fig. 3) and the Eq. 7 check.

Both fit point means (the seeds of each point averaged; analysis/fits.py says why): the point,
not the seed, is the replication unit, so every interval, p-value and Spearman's rho is over
points, with ``n_points`` beside the ``n`` trials.

Fig. 3: for lambda_max, hessian_fro (both as log10) and final_val_acc: OLS of the point means on
log10(eta/S) (eta/S of the base point), slope with its 95% t-interval (n_points - 2 dof),
two-sided p of slope = 0, R^2 of the point means, Spearman's rho over them, and the 95%
confidence band of the fitted mean (yhat +- t_{n-2} s sqrt(1/n + (x - xbar)^2 / Sxx), n points).
Diverged trials are left out; the sections fit curvature only over converged trials
(analysis/convergence.py).

Eq. 7 (the paper): at the end of training E[loss] ~ (eta / 4S) Tr(H). x = (eta / 4S) Tr(H)
with eta/S of the trial's LAST epoch (schedules change it) and Tr(H) its last measured
``hessian_trace``; y = final loss. Reported: the median and quartiles of y / x over trials (1 if
Eq. 7 holds exactly), the log-log OLS slope of y on x over point means (log10 x and log10 y
averaged per point) with its 95% CI (1 if y is proportional to x), and Spearman's rho over the
point means. Trials with x <= 0 (a Hutchinson trace can come out negative), y <= 0 or diverged
are left out.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lrbs.analysis.fits import CI_METHOD, fit_points, metric_values, point_keys, point_means
from lrbs.analysis.stats import mean_band

GEOMETRY_METRICS = (("lambda_max", True), ("hessian_fro", True), ("final_val_acc", False))


@dataclass
class BandFit:
    metric: str  # as fitted ("log10 lambda_max")
    column: str
    log_y: bool
    n: int  # trials
    n_excluded: int
    n_points: int  # point means the fit, its interval and tests are over
    slope: float
    slope_ci: tuple[float, float]  # (nan, nan) with a ci_note when the design allows no interval
    intercept: float
    p: float
    r2: float
    spearman_rho: float
    spearman_p: float
    band_x: list[float]  # eta/S values of the band (not log)
    band_mean: list[float]
    band_lo: list[float]
    band_hi: list[float]  # in the units of the metric (10** when log_y)
    ci_method: str = CI_METHOD
    ci_note: str = ""

    def to_dict(self, band: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not band:
            for k in ("band_x", "band_mean", "band_lo", "band_hi"):
                d.pop(k)
        return d


def ratio_band_fit(trials: pa.Table, column: str, log_y: bool) -> BandFit | str:
    if column not in trials.column_names:
        return f"no {column} column"
    live = trials.filter(pc.not_equal(trials.column("status"), "diverged")) if trials.num_rows else trials
    x, y = metric_values(live, "ratio", True), metric_values(live, column, log_y)
    pm = point_means(point_keys(live), x, y)
    if pm.n_trials < 3:
        return f"{pm.n_trials} trials with a finite {column} (needs >= 3)"
    if len(pm.x) < 3:
        return f"{len(pm.x)} points with a finite {column} (needs >= 3)"
    f = fit_points(pm)
    if f.ols is None:  # equal up to float rounding (a beta family: lr0 S/S0 over S)
        return "every trial has the same eta/S"
    xs = np.linspace(pm.x.min(), pm.x.max(), 40)
    if f.ci_note:
        mean, lo, hi = f.intercept + f.slope * xs, np.full_like(xs, np.nan), np.full_like(xs, np.nan)
    else:
        mean, lo, hi = mean_band(f.ols, pm.x, xs)
    return BandFit(
        metric=("log10 " if log_y else "") + column,
        column=column,
        log_y=log_y,
        n=pm.n_trials,
        n_excluded=trials.num_rows - pm.n_trials,
        band_x=(10**xs).tolist(),
        band_mean=(10**mean if log_y else mean).tolist(),
        band_lo=(10**lo if log_y else lo).tolist(),
        band_hi=(10**hi if log_y else hi).tolist(),
        **f.shared(BandFit),
    )


@dataclass
class Eq7Result:
    n: int
    n_excluded: int
    ratio_median: float  # median of loss / ((eta/4S) Tr H)
    ratio_q25: float
    ratio_q75: float
    n_points: int  # point means of the log-log fit and Spearman
    slope: float  # log10 loss on log10 predicted, over point means
    slope_ci: tuple[float, float]
    intercept: float
    r2: float
    spearman_rho: float
    spearman_p: float
    points: list[dict[str, Any]]  # trial_id, predicted, loss
    loss_column: str = "probe_loss"  # probe_loss; final_train_loss for runs written before it existed
    ci_method: str = CI_METHOD
    ci_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def eq7_loss_column(trials: pa.Table) -> str:
    """E(l) for Eq. 7: ``probe_loss`` (eval mode, probe subset, probed weights: the loss whose
    Hessian Tr(H) is), or ``final_train_loss`` (the train-mode epoch mean) for older runs."""
    if "probe_loss" in trials.column_names and trials.column("probe_loss").null_count < trials.num_rows:
        return "probe_loss"
    return "final_train_loss"


def eq7_points(trials: pa.Table) -> tuple[list[dict[str, Any]], int]:
    loss_col = eq7_loss_column(trials)
    rows = trials.select(
        ["trial_id", "lr", "batch_size", "final_ratio", "hessian_trace", loss_col, "status"]
    ).to_pylist()
    keys = point_keys(trials)
    pts = []
    for r, key in zip(rows, keys):
        tr, loss, q = r["hessian_trace"], r[loss_col], r["final_ratio"]
        if None in (tr, loss, q) or r["status"] == "diverged":
            continue
        pred = q / 4.0 * tr
        if math.isfinite(pred) and pred > 0 and math.isfinite(loss) and loss > 0:
            pts.append(
                {
                    "trial_id": r["trial_id"],
                    "predicted": pred,
                    "loss": loss,
                    "lr": r["lr"],
                    "batch_size": r["batch_size"],
                    "point": key,
                }
            )
    return pts, len(rows) - len(pts)


def eq7_check(trials: pa.Table) -> Eq7Result | str:
    if "hessian_trace" not in trials.column_names:
        return "no hessian_trace column"
    pts, excluded = eq7_points(trials)
    if len(pts) < 3:
        return f"{len(pts)} trials with a positive final Tr(H) and {eq7_loss_column(trials)} (needs >= 3)"
    x = np.log10([p["predicted"] for p in pts])
    y = np.log10([p["loss"] for p in pts])
    q = np.array([p["loss"] / p["predicted"] for p in pts])
    if np.ptp(x) < 1e-9:
        return "every trial has the same predicted loss"
    pm = point_means([p.pop("point") for p in pts], x, y)  # the key is for grouping, not for fits.json
    if len(pm.x) < 3:
        return f"{len(pm.x)} points with a positive final Tr(H) and {eq7_loss_column(trials)} (needs >= 3)"
    f = fit_points(pm)
    # Every point has its own Tr(H), so x is continuous: the "eta/S values" rule of fit_points
    # counts distinct predicted losses, which is what an interval here needs.
    return Eq7Result(
        n=len(pts),
        n_excluded=excluded,
        ratio_median=float(np.median(q)),
        ratio_q25=float(np.percentile(q, 25)),
        ratio_q75=float(np.percentile(q, 75)),
        points=pts,
        loss_column=eq7_loss_column(trials),
        **f.shared(Eq7Result),
    )
