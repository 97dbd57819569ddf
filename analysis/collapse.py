"""Collapse test: do eta and S act on an end-of-training quantity only through eta/S?

Full model (OLS over point means, classical standard errors): the seeds of each point (lr, S, and
the family labels) are averaged first, because the point is the replication unit (seeds of one
point are not independent draws of how eta and S act; analysis/fits.py):

    y = a + b log10(eta) + c log10(S) + e

If only the ratio matters, b = -c. Tested with the two-sided t-test of the linear combination
b + c = 0 (t = (b + c) / se(b + c), se from the coefficient covariance, n - 3 dof); this is the
same test as the nested F-test of the ratio-only model

    y = a' + k log10(eta / S) + e

against the full one (F = t^2), with n_points - 3 dof. The report gives b and c with 95% CIs, b + c with its CI and p,
and R^2 of both models: R^2 close between them means the ratio explains what eta and S explain.

y is the value itself for every metric and, for the positive scale quantities (train loss and
curvature), also log10 of it, where effects are multiplicative; both are reported because a
relation that is not linear in the logs makes the test depend on the scale. Trials that diverged or have no finite value are
left out (counted in ``n_excluded``); eta and S are the trial's base point.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from lrbs.analysis.fits import point_keys, point_means
from lrbs.analysis.stats import lincomb_test, ols, simple_fit

# (metric, fit log10(y)?): every metric as it is, and the positive scale
# quantities also as log10 y (multiplicative effects). The two can disagree where the
# relation is not linear in the logs (e.g. the loss floor at the largest eta/S).
COLLAPSE_METRICS = (
    ("final_val_acc", False),
    ("final_train_loss", False),
    ("final_train_loss", True),
    ("lambda_max", False),
    ("lambda_max", True),
    ("hessian_fro", False),
    ("hessian_fro", True),
)


@dataclass(frozen=True)
class CollapseResult:
    metric: str  # as fitted, e.g. "log10 final_train_loss"
    group: str  # "all" or e.g. "n_train=360"
    n: int  # points (seed means) fitted
    n_excluded: int  # trials left out (diverged, no finite value)
    n_lr: int  # distinct eta values
    n_batch_size: int  # distinct S values
    a: float
    b: float  # coefficient of log10(eta)
    c: float  # coefficient of log10(S)
    b_ci: tuple[float, float]
    c_ci: tuple[float, float]
    b_plus_c: float
    b_plus_c_ci: tuple[float, float]
    t: float
    p: float  # two-sided, H0: b + c = 0
    dof: int
    r2_full: float
    r2_ratio: float  # ratio-only model
    k_ratio: float  # slope on log10(eta/S) of the ratio-only model
    equal_and_opposite: bool  # b+c CI contains 0 (not rejected at 5%)
    n_trials: int = 0  # trials averaged into the points

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collapse_test(trials: pa.Table, metric: str, log_y: bool, group: str = "all") -> CollapseResult | str:
    """The collapse test over a trial table; returns a reason string when it cannot be run."""
    if metric not in trials.column_names:
        return f"no {metric} column"
    rows = trials.select(["lr", "batch_size", "status", metric]).to_pylist()
    keep, excluded = [], 0
    for r, point in zip(rows, point_keys(trials)):
        r["_point"] = point
        v = r[metric]
        ok = v is not None and math.isfinite(float(v)) and r["status"] != "diverged" and (not log_y or float(v) > 0)
        if ok:
            keep.append(r)
        else:
            excluded += 1
    if not keep:
        return f"no finite {metric} values"
    y = np.array([float(r[metric]) for r in keep])
    if log_y:
        y = np.log10(y)
    # Seeds averaged per point; lr and S are constant within a point, so their means are the values.
    lr_col = np.array([r["lr"] for r in keep], dtype=float)
    bs_col = np.array([r["batch_size"] for r in keep], dtype=float)
    keys = [r["_point"] for r in keep]
    lr_pm = point_means(keys, lr_col, y)
    bs_pm = point_means(keys, bs_col, y)
    lr, bs, y_pm = lr_pm.x, bs_pm.x, lr_pm.y
    if len(set(lr)) < 2 or len(set(bs)) < 2:
        return f"needs >= 2 distinct lr and >= 2 distinct batch sizes (has {len(set(lr))} and {len(set(bs))})"
    if len(y_pm) < 5:
        return f"only {len(y_pm)} usable points (needs >= 5 for a 3-parameter fit with 2 dof)"
    le, ls = np.log10(lr), np.log10(bs)
    try:
        fit = ols(np.column_stack([np.ones_like(le), le, ls]), y_pm)
    except ValueError:
        return "log10(eta) and log10(S) are collinear (e.g. a pure beta family): b and c are not separable"
    comb = lincomb_test(fit, np.array([0.0, 1.0, 1.0]))
    ratio = simple_fit(le - ls, y_pm) if np.ptp(le - ls) > 1e-9 else None  # (float rounding is no spread)
    ci = fit.ci()
    lo, hi = comb["ci"]
    return CollapseResult(
        metric=("log10 " if log_y else "") + metric,
        group=group,
        n=len(y_pm),
        n_excluded=excluded,
        n_lr=len(set(np.round(le, 12))),
        n_batch_size=len(set(np.round(ls, 12))),
        a=float(fit.coef[0]),
        b=float(fit.coef[1]),
        c=float(fit.coef[2]),
        b_ci=(float(ci[1, 0]), float(ci[1, 1])),
        c_ci=(float(ci[2, 0]), float(ci[2, 1])),
        b_plus_c=comb["estimate"],
        b_plus_c_ci=(float(lo), float(hi)),
        t=comb["t"],
        p=comb["p"],
        dof=comb["dof"],
        r2_full=fit.r2,
        r2_ratio=ratio.r2 if ratio else math.nan,
        k_ratio=float(ratio.coef[1]) if ratio else math.nan,
        equal_and_opposite=bool(lo <= 0 <= hi),
        n_trials=len(keep),
    )
