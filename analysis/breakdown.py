"""Breakdown of eta/S scaling (Fig. 5): lr = lr0 beta, S = S0 beta, growing beta.

Per training-set size (``n_train``) and beta:

* mean +- sd (ddof = 1) over seeds of each trial's max validation accuracy; diverged seeds are
  kept (their best accuracy before diverging is data) and the row is marked ``*``;
* the learning-curve distance (``analysis.curves``) of the val_acc curves from beta = 1;
* a one-sided Welch t-test of H1: mean max val acc at beta < at beta = 1, for every beta > 1,
  with Holm's step-down correction over the betas > 1 of that n_train, at alpha = 0.05.
  ``beta*`` is the smallest beta > 1 whose Holm-adjusted p is below alpha (None if none is).
  A beta with fewer than 2 seeds, or no variance in both groups, gets p = nan (not tested);
* where the beta = 1 trials measured ``grad_noise_scale`` (B_simple, in examples): the
  predicted critical batch size B_crit = mean over those trials of each one's median B_simple
  over its measured epochs (finite, positive estimates only: B_simple is noisy and its
  |G|^2 estimate can come out negative early in training), and the beta it corresponds to, B_crit / S0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from analysis.curves import curve_distance, curves_of, index_rows
from analysis.stats import holm, mean_sd, welch_less

ALPHA = 0.05


@dataclass
class BetaRow:
    beta: float
    lr: float
    batch_size: int
    n: int
    n_diverged: int
    n_running: int
    mean: float
    sd: float
    diverged_mark: str      # "*" when at least one seed diverged
    t: float = math.nan
    p: float = math.nan
    p_holm: float = math.nan
    significant: bool = False
    curve_rms: float = math.nan
    curve_seed_rms_mean: float = math.nan
    curve_seed_rms_sd: float = math.nan
    values: list[float] = field(default_factory=list)


@dataclass
class BreakdownResult:
    n_train: int | None
    reference_beta: float
    s0: int | None
    lr0: float | None
    rows: list[BetaRow]
    beta_star: float | None
    alpha: float
    test: str
    b_crit: float | None = None
    b_crit_sd: float | None = None
    b_crit_n: int = 0
    beta_crit: float | None = None
    notes: list[str] = field(default_factory=list)
    curves: dict = field(default_factory=dict)  # beta -> CurveDistance.to_dict()

    def to_dict(self) -> dict:
        return asdict(self)


def _noise_scale(metrics: pa.Table, trial_ids: list[str]) -> list[float]:
    if "grad_noise_scale" not in metrics.column_names:
        return []
    per: dict[str, list[float]] = {}
    ids = set(trial_ids)
    for r in metrics.select(["trial_id", "grad_noise_scale"]).to_pylist():
        v = r["grad_noise_scale"]
        if r["trial_id"] in ids and v is not None and math.isfinite(v) and v > 0:
            per.setdefault(r["trial_id"], []).append(v)
    return [float(np.median(v)) for v in per.values()]


def breakdown(metrics: pa.Table, trials: pa.Table, alpha: float = ALPHA, metric: str = "max_val_acc",
              reference_beta: float = 1.0) -> list[BreakdownResult] | str:
    """One BreakdownResult per n_train; a reason string when the data hold no usable beta family."""
    if "beta" not in trials.column_names:
        return "no beta column (no trial belongs to a beta family)"
    rows = [r for r in trials.to_pylist() if r.get("beta") is not None]
    if not rows:
        return "no trial has a beta (no beta family in this run)"
    by_n: dict = {}
    for r in rows:
        by_n.setdefault(r.get("n_train"), []).append(r)
    index = index_rows(metrics, "val_acc")
    out = []
    for n_train in sorted(by_n, key=lambda v: (v is None, v)):
        fam = by_n[n_train]
        betas = sorted({r["beta"] for r in fam})
        ref = [r for r in fam if math.isclose(r["beta"], reference_beta)]
        notes = []
        beta_rows = []
        for beta in betas:
            members = [r for r in fam if r["beta"] == beta]
            vals = [r[metric] for r in members]
            m, sd, n = mean_sd(vals)
            n_div = sum(r["status"] == "diverged" for r in members)
            beta_rows.append(BetaRow(
                beta=beta, lr=members[0]["lr"], batch_size=members[0]["batch_size"], n=n, n_diverged=n_div,
                n_running=sum(r["status"] == "running" for r in members), mean=m, sd=sd,
                diverged_mark="*" if n_div else "", values=[float(v) for v in vals if v is not None]))
        res = BreakdownResult(n_train=n_train, reference_beta=reference_beta, s0=None, lr0=None, rows=beta_rows,
                              beta_star=None, alpha=alpha,
                              test=f"one-sided Welch t-test (H1: mean {metric} at beta < at beta={reference_beta:g}), "
                                   f"Holm over the betas > {reference_beta:g}, alpha={alpha:g}", notes=notes)
        if not ref:
            notes.append(f"no beta={reference_beta:g} trials: no test and no curve distances")
            out.append(res)
            continue
        res.s0, res.lr0 = ref[0]["batch_size"], ref[0]["lr"]
        ref_vals = [r[metric] for r in ref if r[metric] is not None and math.isfinite(r[metric])]
        tested = [br for br in beta_rows if br.beta > reference_beta]
        for br in tested:
            br.t, br.p = welch_less(np.array(br.values), np.array(ref_vals))
        adj = holm([br.p for br in tested])
        for br, pa_ in zip(tested, adj):
            br.p_holm = pa_
            br.significant = bool(math.isfinite(pa_) and pa_ < alpha)
        res.beta_star = next((br.beta for br in tested if br.significant), None)
        ref_curves = curves_of(index, [r["trial_id"] for r in ref], "val_acc")
        for br in beta_rows:
            ids = [r["trial_id"] for r in fam if r["beta"] == br.beta]
            if br.beta == reference_beta:
                continue
            d = curve_distance(curves_of(index, ids, "val_acc"), ref_curves, f"beta={br.beta:g}",
                               f"beta={reference_beta:g}", "val_acc")
            br.curve_rms, br.curve_seed_rms_mean, br.curve_seed_rms_sd = d.rms, d.seed_rms_mean, d.seed_rms_sd
            res.curves[f"{br.beta:g}"] = d.to_dict()
        gns = _noise_scale(metrics, [r["trial_id"] for r in ref])
        if gns:
            m, sd, n = mean_sd(gns)
            res.b_crit, res.b_crit_sd, res.b_crit_n = m, (None if math.isnan(sd) else sd), n
            res.beta_crit = m / res.s0
        else:
            notes.append("no grad_noise_scale measured at beta=1: no predicted critical batch size")
        out.append(res)
    return out
