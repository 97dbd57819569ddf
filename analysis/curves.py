"""Distances between learning curves (Fig. 1: equal eta/S; Fig. 2: rescaling rules; Fig. 5).

A *configuration* is the set of trials (seeds) that share everything but the seed. For two
configurations A and B and a per-epoch metric y (default ``val_acc``), over the epochs that
both have (at least one seed each):

* per epoch: ``diff(e) = mean_A(e) - mean_B(e)`` (seed means), its standard error
  ``sqrt(sd_A(e)^2 / n_A(e) + sd_B(e)^2 / n_B(e))`` (nan with a single seed) and the seed
  standard deviations ``sd_A(e)``, ``sd_B(e)`` (ddof = 1);
* summary: ``rms`` = sqrt(mean_e diff(e)^2), the distance between the seed-mean curves;
  ``seed_rms_mean`` +- ``seed_rms_sd``: the RMS distance between single-seed curves, one per seed
  that A and B share (mean and sd over seeds; every cross pair when they share none);
  ``noise_rms``: the same RMS distance between two seeds of ONE configuration, averaged over all
  such pairs within A and within B -- the distance expected from seed noise alone. A pair whose
  curves agree as well as two seeds of one configuration has rms close to noise_rms.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

Curves = dict[int, dict[int, float]]  # seed -> epoch -> value
Row = dict[str, Any]  # a table row (``to_pylist``)
Index = dict[str, list[Row]]  # trial_id -> its epoch rows (``index_rows``)


@dataclass
class CurveDistance:
    a: str
    b: str
    metric: str
    epochs: list[int]
    diff: list[float]
    diff_se: list[float]
    sd_a: list[float]
    sd_b: list[float]
    rms: float
    mean_abs: float
    seed_rms_mean: float
    seed_rms_sd: float
    n_seed_pairs: int
    noise_rms: float
    n_a: int
    n_b: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def index_rows(metrics: pa.Table, metric: str) -> Index:
    """trial_id -> its epoch rows (seed, epoch, ratio, metric), read once for many look-ups."""
    out: Index = {}
    for r in metrics.select(["trial_id", "seed", "epoch", "ratio", metric]).to_pylist():
        out.setdefault(r["trial_id"], []).append(r)
    return out


def curves_of(index: Index, trial_ids: list[str], metric: str) -> Curves:
    """seed -> epoch -> finite value, for the given trials (one trial per seed: the first wins)."""
    out: Curves = {}
    owner: dict[int, str] = {}
    for r in (r for t in trial_ids for r in index.get(t, [])):
        seed = r["seed"]
        if owner.setdefault(seed, r["trial_id"]) != r["trial_id"]:
            continue
        v = r[metric]
        if v is not None and math.isfinite(v):
            out.setdefault(seed, {})[r["epoch"]] = float(v)
    return out


def _rms(x: dict[int, float], y: dict[int, float]) -> float:
    common = sorted(set(x) & set(y))
    if not common:
        return math.nan
    d = np.array([x[e] - y[e] for e in common])
    return float(np.sqrt(np.mean(d**2)))


def _stats(curves: Curves, epoch: int) -> tuple[float, float, int]:
    v = np.array([c[epoch] for c in curves.values() if epoch in c])
    if len(v) == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


def curve_distance(
    a: Curves, b: Curves, name_a: str = "A", name_b: str = "B", metric: str = "val_acc"
) -> CurveDistance:
    epochs_a = {e for c in a.values() for e in c}
    epochs_b = {e for c in b.values() for e in c}
    epochs = sorted(epochs_a & epochs_b)
    diff, se, sda, sdb = [], [], [], []
    for e in epochs:
        ma, sa, na = _stats(a, e)
        mb, sb, nb = _stats(b, e)
        diff.append(ma - mb)
        sda.append(sa)
        sdb.append(sb)
        se.append(math.sqrt(sa**2 / na + sb**2 / nb) if na > 1 and nb > 1 else math.nan)
    d = np.array(diff)
    rms = float(np.sqrt(np.mean(d**2))) if len(d) else math.nan
    mean_abs = float(np.mean(np.abs(d))) if len(d) else math.nan
    shared = sorted(set(a) & set(b))
    pairs = [(a[s], b[s]) for s in shared] or [(a[s], b[t]) for s in a for t in b]
    seed_d = np.array([x for x in (_rms(p, q) for p, q in pairs) if math.isfinite(x)])
    noise = [
        x for cs in (a, b) for s, t in itertools.combinations(sorted(cs), 2) if math.isfinite(x := _rms(cs[s], cs[t]))
    ]
    return CurveDistance(
        a=name_a,
        b=name_b,
        metric=metric,
        epochs=epochs,
        diff=diff,
        diff_se=se,
        sd_a=sda,
        sd_b=sdb,
        rms=rms,
        mean_abs=mean_abs,
        seed_rms_mean=float(seed_d.mean()) if len(seed_d) else math.nan,
        seed_rms_sd=float(seed_d.std(ddof=1)) if len(seed_d) > 1 else math.nan,
        n_seed_pairs=len(seed_d),
        noise_rms=float(np.mean(noise)) if noise else math.nan,
        n_a=len(a),
        n_b=len(b),
    )


# ----------------------------------------------------------------------------- configurations


def config_key(row: Row) -> tuple[Any, ...]:
    """What identifies a configuration (all but the seed)."""
    return (
        row.get("n_train"),
        row.get("model"),
        row.get("dataset"),
        row.get("schedule"),
        row.get("rescale"),
        row.get("beta"),
        float(row["lr"]),
        int(row["batch_size"]),
    )


def config_label(row: Row) -> str:
    parts = [f"lr={row['lr']:g}", f"S={row['batch_size']}"]
    if row.get("schedule") not in (None, "constant"):
        parts.append(str(row["schedule"]))
    if row.get("rescale") is not None:
        parts.append(f"rescale={row['rescale']}")
    if row.get("beta") is not None:
        parts.append(f"beta={row['beta']:g}")
    return " ".join(parts)


def configurations(trials: pa.Table) -> dict[tuple[Any, ...], list[Row]]:
    out: dict[tuple[Any, ...], list[Row]] = {}
    for r in trials.to_pylist():
        out.setdefault(config_key(r), []).append(r)
    return out


def ratio_signature(index: Index, trial_id: str) -> tuple[float, ...]:
    """The per-epoch eta/S sequence of a trial (6 significant digits): trials whose sequences match
    follow the same SDE, whatever their eta and S (constant pairs or cyclic LR vs cyclic S)."""
    rows = index.get(trial_id, [])
    return tuple(float(f"{r['ratio']:.6g}") for r in sorted(rows, key=lambda r: r["epoch"]))


def equal_ratio_pairs(metrics: pa.Table, trials: pa.Table, metric: str = "val_acc") -> list[CurveDistance]:
    """Fig. 1: every pair of configurations whose eta/S sequences agree over their common epochs but
    whose (eta, S, schedule) differ, same data set size and model. Beta families and rescale
    families are left to their own sections."""
    configs = configurations(trials)
    index = index_rows(metrics, metric)
    sig: dict[tuple[Any, ...], tuple[float, ...]] = {}
    for key, rows in configs.items():
        if rows[0].get("beta") is not None or rows[0].get("rescale") is not None:
            continue
        longest = max(rows, key=lambda r: r["epochs_done"] or 0)
        sig[key] = ratio_signature(index, longest["trial_id"])
    out = []
    for ka, kb in itertools.combinations(sorted(sig, key=str), 2):
        if ka[:3] != kb[:3] or ka[3:] == kb[3:]:
            continue
        sa, sb = sig[ka], sig[kb]
        m = min(len(sa), len(sb))
        if m == 0 or sa[:m] != sb[:m]:
            continue
        ra, rb = configs[ka], configs[kb]
        dist = curve_distance(
            curves_of(index, [r["trial_id"] for r in ra], metric),
            curves_of(index, [r["trial_id"] for r in rb], metric),
            config_label(ra[0]),
            config_label(rb[0]),
            metric,
        )
        dist.extra = {"ratio": ra[0]["ratio"], "n_train": ka[0]}
        out.append(dist)
    return out


def rescale_distances(metrics: pa.Table, trials: pa.Table, metric: str = "val_acc") -> list[CurveDistance]:
    """Fig. 2: each (rule, S) configuration of a rescaling family against the family's small-batch
    reference: the trials at the family's smallest S (pooled over rules; at S0 all rules agree).
    Families are split by data set size, model and schedule."""
    fams: dict[tuple[Any, ...], list[Row]] = {}
    for r in trials.to_pylist():
        if r.get("rescale") is not None:
            fams.setdefault((r.get("n_train"), r.get("model"), r.get("schedule")), []).append(r)
    out = []
    index = index_rows(metrics, metric) if fams else {}
    for fam_key, rows in sorted(fams.items(), key=lambda kv: str(kv[0])):
        s0 = min(r["batch_size"] for r in rows)
        ref = [r for r in rows if r["batch_size"] == s0]
        ref_curves = curves_of(index, [r["trial_id"] for r in ref], metric)
        groups: dict[tuple[Any, ...], list[Row]] = {}
        for r in rows:
            if r["batch_size"] != s0:
                groups.setdefault((r["rescale"], r["batch_size"]), []).append(r)
        for (rule, s), members in sorted(groups.items()):
            dist = curve_distance(
                curves_of(index, [r["trial_id"] for r in members], metric),
                ref_curves,
                f"{rule} S={s} lr={members[0]['lr']:g}",
                f"reference S={s0} lr={ref[0]['lr']:g}",
                metric,
            )
            dist.extra = {
                "rule": rule,
                "batch_size": s,
                "lr": members[0]["lr"],
                "reference_batch_size": s0,
                "n_train": fam_key[0],
            }
            out.append(dist)
    return out
