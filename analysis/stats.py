"""Small statistics kernels used by the report sections (numpy/scipy only, no state).

* :func:`ols` -- least squares with classical (homoskedastic) standard errors, the covariance of
  the coefficients, R^2, and t-based confidence intervals.
* :func:`lincomb_test` -- two-sided t-test of ``w @ beta = 0`` (e.g. b + c = 0).
* :func:`mean_band` -- the 95% confidence band of a simple regression's mean line.
* :func:`welch_se_df` -- the unpooled standard error of a difference of means and its Welch df.
* :func:`welch_less` -- one-sided Welch t-test that mean(x) < mean(y).
* :func:`holm` -- Holm's step-down adjustment of a family of p-values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class OLSResult:
    coef: np.ndarray  # (k,)
    cov: np.ndarray  # (k, k) classical: s^2 (X'X)^-1
    se: np.ndarray
    dof: int  # n - k
    rss: float
    r2: float
    n: int

    def ci(self, level: float = 0.95) -> np.ndarray:
        """(k, 2) t-based confidence intervals of the coefficients."""
        t = stats.t.ppf(0.5 + level / 2, self.dof) if self.dof > 0 else math.nan
        return np.stack([self.coef - t * self.se, self.coef + t * self.se], axis=1)

    def p_values(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            tval = self.coef / self.se
        return 2 * stats.t.sf(np.abs(tval), self.dof) if self.dof > 0 else np.full_like(self.coef, math.nan)


def ols(X: np.ndarray, y: np.ndarray) -> OLSResult:
    """y = X beta + e by least squares; X must already hold the intercept column.

    Raises ValueError when X is rank deficient or has no residual degrees of freedom.
    """
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    n, k = X.shape
    if n <= k or np.linalg.matrix_rank(X) < k:
        raise ValueError(f"design of {n} rows and rank {np.linalg.matrix_rank(X)} < {k} columns + 1")
    xtx_inv = np.linalg.inv(X.T @ X)
    coef = xtx_inv @ X.T @ y
    resid = y - X @ coef
    rss = float(resid @ resid)
    dof = n - k
    s2 = rss / dof
    cov = s2 * xtx_inv
    tss = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - rss / tss if tss > 0 else math.nan
    return OLSResult(coef=coef, cov=cov, se=np.sqrt(np.diag(cov)), dof=dof, rss=rss, r2=r2, n=n)


def lincomb_test(fit: OLSResult, w: np.ndarray, level: float = 0.95) -> dict[str, Any]:
    """Estimate, standard error, CI, t and two-sided p of ``w @ coef`` (H0: it is 0)."""
    w = np.asarray(w, dtype=float)
    est = float(w @ fit.coef)
    se = float(math.sqrt(max(w @ fit.cov @ w, 0.0)))
    tq = stats.t.ppf(0.5 + level / 2, fit.dof)
    t = est / se if se > 0 else math.nan
    p = float(2 * stats.t.sf(abs(t), fit.dof)) if math.isfinite(t) else math.nan
    return {"estimate": est, "stderr": se, "ci": (est - tq * se, est + tq * se), "t": t, "p": p, "dof": fit.dof}


def simple_fit(x: np.ndarray, y: np.ndarray) -> OLSResult:
    """y = a + b x (coef = [a, b])."""
    x = np.asarray(x, dtype=float)
    return ols(np.column_stack([np.ones_like(x), x]), y)


def mean_band(
    fit: OLSResult, x: np.ndarray, xs: np.ndarray, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fitted mean at ``xs`` and its pointwise ``level`` confidence band for a :func:`simple_fit`.

    band = yhat +- t_{n-2} s sqrt(1/n + (x - xbar)^2 / Sxx)
    """
    x = np.asarray(x, dtype=float)
    xs = np.asarray(xs, dtype=float)
    yhat = fit.coef[0] + fit.coef[1] * xs
    s = math.sqrt(fit.rss / fit.dof)
    sxx = float(((x - x.mean()) ** 2).sum())
    t = stats.t.ppf(0.5 + level / 2, fit.dof)
    half = t * s * np.sqrt(1.0 / len(x) + (xs - x.mean()) ** 2 / sxx)
    return yhat, yhat - half, yhat + half


def welch_se_df(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Standard error of mean(x) - mean(y) (unpooled) and its Welch-Satterthwaite degrees of
    freedom; nan for both with fewer than 2 values on a side or no variance on either."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan
    # equal values have no variance (np.var of equal floats can come out as ~1e-33, not 0)
    vx = np.var(x, ddof=1) / len(x) if np.ptp(x) > 0 else 0.0
    vy = np.var(y, ddof=1) / len(y) if np.ptp(y) > 0 else 0.0
    if vx + vy == 0:
        return math.nan, math.nan
    df = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    return float(math.sqrt(vx + vy)), float(df)


def welch_less(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """One-sided Welch t-test of H1: mean(x) < mean(y). Returns (t, p); nan when undefined
    (fewer than 2 values in a group, or no variance in either). Computed from
    :func:`welch_se_df` rather than ``scipy.stats.ttest_ind``, which warns of precision loss (and
    may carry a ~1e-33 variance) when every seed of one side has the same accuracy, a common case."""
    se, df = welch_se_df(x, y)
    if not math.isfinite(se):
        return math.nan, math.nan
    t = (float(np.mean(x)) - float(np.mean(y))) / se
    return t, float(stats.t.cdf(t, df))


def holm(pvalues: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (nan stays nan and is not counted in the family)."""
    p = np.asarray(pvalues, dtype=float)
    ok = np.flatnonzero(np.isfinite(p))
    out = np.full(len(p), math.nan)
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def mean_sd(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof=1; nan for one value) and count of the finite values."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)
