"""Sharpness and generalization against eta/S (Fig. 3) and the Eq. 7 check.

Fig. 3: for lambda_max, hessian_fro (both as log10) and final_val_acc: OLS of y on
log10(eta/S) over trials (eta/S of the base point), slope with its 95% t-interval, two-sided
p of slope = 0, R^2, Spearman's rho, and the 95% confidence band of the fitted mean
(yhat +- t_{n-2} s sqrt(1/n + (x - xbar)^2 / Sxx)). Diverged trials are left out.

Eq. 7 (the paper): at the end of training E[loss] ~ (eta / 4S) Tr(H). x = (eta / 4S) Tr(H)
with eta/S of the trial's LAST epoch (schedules change it) and Tr(H) its last measured
``hessian_trace``; y = final train loss. Reported: the median and quartiles of y / x (1 if Eq.
7 holds exactly), the log-log OLS slope of y on x with its 95% CI (1 if y is proportional to x)
and Spearman's rho. Trials with x <= 0 (a Hutchinson trace can come out negative), y <= 0 or
diverged are left out.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from scipy import stats

from analysis.stats import mean_band, simple_fit

GEOMETRY_METRICS = (("lambda_max", True), ("hessian_fro", True), ("final_val_acc", False))


@dataclass
class BandFit:
    metric: str          # as fitted ("log10 lambda_max")
    column: str
    log_y: bool
    n: int
    n_excluded: int
    slope: float
    slope_ci: tuple[float, float]
    intercept: float
    p: float
    r2: float
    spearman_rho: float
    spearman_p: float
    band_x: list[float]  # eta/S values of the band (not log)
    band_mean: list[float]
    band_lo: list[float]
    band_hi: list[float]  # in the units of the metric (10** when log_y)

    def to_dict(self, band: bool = False) -> dict:
        d = asdict(self)
        if not band:
            for k in ("band_x", "band_mean", "band_lo", "band_hi"):
                d.pop(k)
        return d


def _spearman(x, y) -> tuple[float, float]:
    if len(x) >= 3 and np.ptp(x) > 0 and np.ptp(y) > 0:
        r = stats.spearmanr(x, y)
        return float(r.statistic), float(r.pvalue)
    return math.nan, math.nan


def ratio_band_fit(trials: pa.Table, column: str, log_y: bool, x_column: str = "ratio") -> BandFit | str:
    if column not in trials.column_names:
        return f"no {column} column"
    rows = trials.select([x_column, "status", column]).to_pylist()
    keep = [r for r in rows if r[column] is not None and math.isfinite(float(r[column])) and r["status"] != "diverged"
            and (not log_y or float(r[column]) > 0) and r[x_column] and r[x_column] > 0]
    if len(keep) < 3:
        return f"{len(keep)} trials with a finite {column} (needs >= 3)"
    x = np.log10([r[x_column] for r in keep])
    y = np.array([float(r[column]) for r in keep])
    if log_y:
        y = np.log10(y)
    if np.ptp(x) < 1e-9:  # equal up to float rounding (a beta family: lr0 S/S0 over S)
        return "every trial has the same eta/S"
    fit = simple_fit(x, y)
    ci = fit.ci()[1]
    xs = np.linspace(x.min(), x.max(), 40)
    mean, lo, hi = mean_band(fit, x, xs)
    tf = (lambda v: 10 ** v) if log_y else (lambda v: v)
    rho, rp = _spearman(x, y)
    return BandFit(metric=("log10 " if log_y else "") + column, column=column, log_y=log_y, n=len(keep),
                   n_excluded=len(rows) - len(keep), slope=float(fit.coef[1]), slope_ci=(float(ci[0]), float(ci[1])),
                   intercept=float(fit.coef[0]), p=float(fit.p_values()[1]), r2=fit.r2, spearman_rho=rho,
                   spearman_p=rp, band_x=(10 ** xs).tolist(), band_mean=tf(mean).tolist(), band_lo=tf(lo).tolist(),
                   band_hi=tf(hi).tolist())


@dataclass
class Eq7Result:
    n: int
    n_excluded: int
    ratio_median: float     # median of loss / ((eta/4S) Tr H)
    ratio_q25: float
    ratio_q75: float
    slope: float            # log10 loss on log10 predicted
    slope_ci: tuple[float, float]
    intercept: float
    r2: float
    spearman_rho: float
    spearman_p: float
    points: list[dict]      # trial_id, predicted, loss
    loss_column: str = "probe_loss"   # probe_loss; final_train_loss for runs written before it existed

    def to_dict(self) -> dict:
        return asdict(self)


def eq7_loss_column(trials: pa.Table) -> str:
    """E(l) for Eq. 7: ``probe_loss`` (eval mode, probe subset, probed weights: the loss whose
    Hessian Tr(H) is), or ``final_train_loss`` (the train-mode epoch mean) for older runs."""
    if "probe_loss" in trials.column_names and trials.column("probe_loss").null_count < trials.num_rows:
        return "probe_loss"
    return "final_train_loss"


def eq7_points(trials: pa.Table) -> tuple[list[dict], int]:
    loss_col = eq7_loss_column(trials)
    rows = trials.select(["trial_id", "lr", "batch_size", "final_ratio", "hessian_trace", loss_col,
                          "status"]).to_pylist()
    pts = []
    for r in rows:
        tr, loss, q = r["hessian_trace"], r[loss_col], r["final_ratio"]
        if None in (tr, loss, q) or r["status"] == "diverged":
            continue
        pred = q / 4.0 * tr
        if math.isfinite(pred) and pred > 0 and math.isfinite(loss) and loss > 0:
            pts.append({"trial_id": r["trial_id"], "predicted": pred, "loss": loss, "lr": r["lr"],
                        "batch_size": r["batch_size"]})
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
    fit = simple_fit(x, y)
    ci = fit.ci()[1]
    rho, rp = _spearman(x, y)
    return Eq7Result(n=len(pts), n_excluded=excluded, ratio_median=float(np.median(q)),
                     ratio_q25=float(np.percentile(q, 25)), ratio_q75=float(np.percentile(q, 75)),
                     slope=float(fit.coef[1]), slope_ci=(float(ci[0]), float(ci[1])), intercept=float(fit.coef[0]),
                     r2=fit.r2, spearman_rho=rho, spearman_p=rp, points=pts, loss_column=eq7_loss_column(trials))
