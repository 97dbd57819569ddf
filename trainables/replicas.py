"""Vectorized seeds: K replicas of one (eta, S) MLP trained together in one process.

The replicas share nothing but the data tensors. Each one is the computation ``run_training``
does for its own seed, batched:

* **Weights** are stacked, ``(K, fan_in, fan_out)``, and every layer is one batched matmul
  (``torch.bmm`` / ``torch.baddbmm``) instead of K small ones: on a CPU that saves K-1 rounds of
  Python and dispatch per layer, on a GPU K-1 kernel launches (small-batch steps are launch-bound).
* **Initialization**: replica k is ``trainables.models.MLP`` built right after
  ``torch.manual_seed(seed_k)`` (as ``run_training`` does), its parameters then stacked.
* **Batch norm** is per replica: the (K, S, H) activations are laid out as (S, K*H) so one fused
  ``F.batch_norm`` call keeps separate batch statistics and separate running statistics for
  every (replica, feature) pair.
* **Batch order**: replica k draws ``torch.randperm(n, generator=g_k)`` per epoch from its own
  CPU generator ``torch.Generator().manual_seed(seed_k)``, as ``run_training`` does; the (K, S)
  index matrix gathers all replicas' batches in one indexing op.
* **Loss and SGD**: the objective is the sum of the K per-replica mean losses, so each replica's
  gradient is exactly its own; SGD with momentum and weight decay is applied to the stacked
  tensors with the update of ``torch.optim.SGD`` (dampening 0, no Nesterov), which is
  elementwise and therefore the same per replica.
* **Divergence**: a replica whose epoch ends diverged (the rule of ``run_training``) gets its
  last row with status ``diverged`` and is then dropped from the stacks; the others go on.
* **Checkpoints**: ``report(rows, state)``'s ``state()`` holds the stacks of the replicas still
  active, the momentum buffers, every replica's batch-order generator state, torch's RNG state,
  the active positions and per-seed statuses; ``run_replicas(start_state=...)`` continues from it
  with the rows of an uninterrupted run, and ``train_replica_trial`` saves and restores it as
  ``train_trial`` does for one seed.

Only the ``mlp`` model has a vectorized path; ``run_replicas`` runs other models one seed after
another through ``run_training``.
"""
from __future__ import annotations

import math
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from trainables.config import DatasetConfig, ModelConfig, TrainConfig
from trainables.data import TensorData, load_dataset
from trainables.models import MLP, build_model

RUNNING, FINISHED, DIVERGED = "running", "finished", "diverged"

VECTORIZED_MODELS = ("mlp",)  # models with a stacked-weights path; others run seed after seed

BN_EPS = 1e-5        # nn.BatchNorm1d defaults
BN_MOMENTUM = 0.1


class StackedMLP:
    """K ``MLP`` replicas as stacked tensors. Parameters are leaf tensors with ``requires_grad``.

    ``weights[i]``: (K, fan_in, fan_out) (the transpose of ``nn.Linear.weight`` per replica);
    ``biases[i]``: (K, 1, fan_out) or None; ``bn[i]``: dict of ``weight``, ``bias``,
    ``running_mean``, ``running_var`` (each (K, H)) for hidden layers with batch norm.
    """

    def __init__(self, models: Sequence[MLP]):
        if not models:
            raise ValueError("StackedMLP needs at least one model")
        per_model = [_mlp_layers(m) for m in models]
        n_layers = len(per_model[0])
        self.weights: list[torch.Tensor] = []
        self.biases: list[torch.Tensor | None] = []
        self.bn: list[dict[str, torch.Tensor] | None] = []
        for i in range(n_layers):
            lins = [layers[i][0] for layers in per_model]
            bns = [layers[i][1] for layers in per_model]
            self.weights.append(torch.stack([l.weight.detach().t() for l in lins]).contiguous().requires_grad_())
            if lins[0].bias is not None:
                self.biases.append(torch.stack([l.bias.detach() for l in lins]).unsqueeze(1).contiguous().requires_grad_())
            else:
                self.biases.append(None)
            if bns[0] is not None:
                self.bn.append({
                    "weight": torch.stack([b.weight.detach() for b in bns]).contiguous().requires_grad_(),
                    "bias": torch.stack([b.bias.detach() for b in bns]).contiguous().requires_grad_(),
                    "running_mean": torch.stack([b.running_mean for b in bns]).contiguous(),
                    "running_var": torch.stack([b.running_var for b in bns]).contiguous(),
                })
            else:
                self.bn.append(None)
        self.k = len(models)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], cfg: ModelConfig, input_shape: tuple[int, ...],
                   n_classes: int, device: torch.device | str = "cpu") -> StackedMLP:
        """Replica k initialized exactly as ``run_training`` initializes seed k's model."""
        models = []
        for seed in seeds:
            torch.manual_seed(seed)
            models.append(build_model(cfg, input_shape, n_classes))
        stacked = cls(models)
        return stacked.to(device)

    # -- parameter handling -------------------------------------------------------------------

    def parameters(self) -> list[torch.Tensor]:
        params: list[torch.Tensor] = []
        for w, b, bn in zip(self.weights, self.biases, self.bn):
            params.append(w)
            if b is not None:
                params.append(b)
            if bn is not None:
                params += [bn["weight"], bn["bias"]]
        return params

    def buffers(self) -> list[torch.Tensor]:
        return [t for bn in self.bn if bn is not None for t in (bn["running_mean"], bn["running_var"])]

    def _map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        def leaf(t: torch.Tensor) -> torch.Tensor:
            out = fn(t.detach())
            return out.requires_grad_() if t.requires_grad else out
        self.weights = [leaf(w) for w in self.weights]
        self.biases = [None if b is None else leaf(b) for b in self.biases]
        self.bn = [None if bn is None else {k: leaf(v) for k, v in bn.items()} for bn in self.bn]

    def to(self, device: torch.device | str) -> StackedMLP:
        self._map(lambda t: t.to(device).contiguous())
        return self

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the replicas at indices ``keep`` (a 1-D long tensor)."""
        self._map(lambda t: t.index_select(0, keep.to(t.device)).contiguous())
        self.k = len(keep)

    def state_tensors(self) -> dict[str, Any]:
        """Detached CPU copies of every stacked tensor (parameters and batch-norm buffers), as lists
        and dicts of tensors: what a ``weights_only`` checkpoint can hold."""
        def cpu(t: torch.Tensor) -> torch.Tensor:
            return t.detach().to("cpu", copy=True)
        return {
            "weights": [cpu(w) for w in self.weights],
            "biases": [None if b is None else cpu(b) for b in self.biases],
            "bn": [None if bn is None else {k: cpu(v) for k, v in bn.items()} for bn in self.bn],
        }

    def load_state_tensors(self, state: dict[str, Any]) -> None:
        """Replace the stacks by those of ``state_tensors()`` (any K: the stacks take their size)."""
        def into(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
            if old.shape[1:] != new.shape[1:]:
                raise ValueError(f"checkpoint tensor of shape {tuple(new.shape)} for a stack of {tuple(old.shape)}")
            out = new.detach().to(old.device, old.dtype).contiguous()
            return out.requires_grad_() if old.requires_grad else out
        if len(state["weights"]) != len(self.weights):
            raise ValueError(f"checkpoint has {len(state['weights'])} layers, the model {len(self.weights)}")
        self.weights = [into(w, n) for w, n in zip(self.weights, state["weights"])]
        self.biases = [None if b is None else into(b, n) for b, n in zip(self.biases, state["biases"])]
        self.bn = [None if bn is None else {k: into(v, nbn[k]) for k, v in bn.items()}
                   for bn, nbn in zip(self.bn, state["bn"])]
        self.k = self.weights[0].shape[0]

    def replica_state(self, k: int) -> dict[str, torch.Tensor]:
        """Replica k's tensors under the ``state_dict`` names of the equivalent ``MLP``."""
        out: dict[str, torch.Tensor] = {}
        idx = 1  # net.0 is Flatten; then Linear, [BatchNorm1d], ReLU per hidden layer; last Linear
        last = len(self.weights) - 1
        for i, (w, b, bn) in enumerate(zip(self.weights, self.biases, self.bn)):
            out[f"net.{idx}.weight"] = w[k].detach().t()
            if b is not None:
                out[f"net.{idx}.bias"] = b[k, 0].detach()
            idx += 1
            if bn is not None:
                out[f"net.{idx}.weight"] = bn["weight"][k].detach()
                out[f"net.{idx}.bias"] = bn["bias"][k].detach()
                out[f"net.{idx}.running_mean"] = bn["running_mean"][k]
                out[f"net.{idx}.running_var"] = bn["running_var"][k]
                idx += 1
            if i < last:
                idx += 1  # ReLU
        return out

    # -- forward -------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        """``x``: (K, B, D) per-replica inputs, or (B, D) shared by all replicas -> (K, B, C) logits."""
        h = x
        last = len(self.weights) - 1
        for i, (w, b, bn) in enumerate(zip(self.weights, self.biases, self.bn)):
            if h.dim() == 2:  # shared input: broadcast matmul (B, D) @ (K, D, H)
                h = torch.matmul(h, w) if b is None else torch.matmul(h, w) + b
            else:
                h = torch.bmm(h, w) if b is None else torch.baddbmm(b, h, w)
            if i == last:
                break
            if bn is not None:
                k, n, width = h.shape
                flat = h.transpose(0, 1).reshape(n, k * width)  # channel = (replica, feature)
                flat = F.batch_norm(flat, bn["running_mean"].view(-1), bn["running_var"].view(-1),
                                    bn["weight"].view(-1), bn["bias"].view(-1), training=training,
                                    momentum=BN_MOMENTUM, eps=BN_EPS)
                # Back to (K, S, H) contiguous: bmm and its backward are faster on dense layouts.
                h = flat.view(n, k, width).transpose(0, 1).contiguous()
            h = torch.relu(h)
        return h

    __call__ = forward


def _mlp_layers(model: MLP) -> list[tuple[nn.Linear, nn.BatchNorm1d | None]]:
    """(Linear, BatchNorm or None) per layer of an ``MLP``, in order."""
    if not isinstance(model, MLP):
        raise TypeError(f"StackedMLP stacks trainables.models.MLP, got {type(model).__name__}")
    layers: list[tuple[nn.Linear, nn.BatchNorm1d | None]] = []
    mods = list(model.net)
    for i, m in enumerate(mods):
        if isinstance(m, nn.Linear):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            layers.append((m, nxt if isinstance(nxt, nn.BatchNorm1d) else None))
    return layers


class StackedSGD:
    """``torch.optim.SGD`` (dampening 0, no Nesterov) on stacked tensors: elementwise, so per replica."""

    def __init__(self, params: list[torch.Tensor], lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        self.params = params
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.bufs: list[torch.Tensor | None] = [None] * len(params)

    @torch.no_grad()
    def step(self) -> None:
        grads = [p.grad for p in self.params]
        if self.weight_decay:
            grads = torch._foreach_add(grads, self.params, alpha=self.weight_decay)
        if self.momentum:
            if self.bufs[0] is None:
                self.bufs = [g.detach().clone() for g in grads]
            else:
                torch._foreach_mul_(self.bufs, self.momentum)
                torch._foreach_add_(self.bufs, grads)
            grads = self.bufs
        torch._foreach_add_(self.params, grads, alpha=-self.lr)

    def state_tensors(self) -> list[torch.Tensor] | None:
        """Detached CPU copies of the momentum buffers (None before the first momentum step)."""
        if self.bufs[0] is None:
            return None
        return [b.detach().to("cpu", copy=True) for b in self.bufs]  # type: ignore[union-attr]

    def load_state_tensors(self, bufs: list[torch.Tensor] | None) -> None:
        if bufs is None:
            self.bufs = [None] * len(self.params)
            return
        if len(bufs) != len(self.params):
            raise ValueError(f"checkpoint has {len(bufs)} momentum buffers for {len(self.params)} parameters")
        self.bufs = [b.to(p.device, p.dtype).contiguous() for b, p in zip(bufs, self.params)]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def rebind(self, params: list[torch.Tensor], keep: torch.Tensor) -> None:
        """Follow ``StackedMLP.select``: new parameter tensors, momentum buffers cut to ``keep``."""
        self.params = params
        if self.bufs[0] is not None:
            self.bufs = [b.index_select(0, keep.to(b.device)).contiguous() for b in self.bufs]  # type: ignore[union-attr]


def cross_entropy_per_replica(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K, B, C) logits and (K, B) labels -> (K,) mean cross-entropy of each replica."""
    k, b, c = logits.shape
    return F.cross_entropy(logits.reshape(k * b, c), y.reshape(k * b), reduction="none").view(k, b).mean(1)


@torch.no_grad()
def evaluate_replicas(model: StackedMLP, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[list[float], list[float]]:
    """Per-replica mean cross-entropy and accuracy on shared data, batch norm in inference mode."""
    x = x.flatten(1)
    loss_sum = torch.zeros(model.k, device=x.device, dtype=torch.float64)
    correct = torch.zeros(model.k, device=x.device, dtype=torch.int64)
    for start in range(0, len(x), batch_size):
        logits = model(x[start:start + batch_size], training=False)  # (K, B, C)
        yb = y[start:start + batch_size]
        k, b, c = logits.shape
        loss = F.cross_entropy(logits.reshape(k * b, c), yb.repeat(k), reduction="none").view(k, b)
        loss_sum += loss.double().sum(1)
        correct += (logits.argmax(2) == yb).sum(1)
    n = max(len(x), 1)
    return (loss_sum / n).tolist(), (correct.double() / n).tolist()  # GPU sync: once per evaluation


# Reporter for run_replicas: report(rows, state); ``state()`` builds the checkpoint dict (a
# reporter that does not checkpoint never calls it, so plain runs pay nothing for it).
ReplicaReporter = Callable[[list[dict[str, Any]], Callable[[], dict[str, Any]]], None]


def run_replicas(
    lr: float,
    batch_size: int,
    seeds: Sequence[int],
    dataset: DatasetConfig,
    model_cfg: ModelConfig,
    train: TrainConfig,
    report: ReplicaReporter,
    device: torch.device | str = "cpu",
    data: TensorData | None = None,
    max_steps: int | None = None,
    start_state: dict[str, Any] | None = None,
) -> dict[int, str]:
    """Train one (lr, S) point for every seed in ``seeds`` together; returns ``{seed: status}``.

    After every epoch ``report(rows, state)`` gets one row per replica still training (same keys
    as ``run_training``'s rows; a replica that diverged that epoch is in it one last time) and
    ``state``, a function that builds the checkpoint of that epoch: tensors and plain data only
    (``torch.save`` / ``torch.load(weights_only=True)``), taken after the replicas that diverged
    were dropped. ``start_state`` (such a checkpoint) continues from the epoch after it with the
    same rows an uninterrupted run would have reported. ``max_steps`` stops after that many steps
    (for tests and benchmarks; no row is reported for a cut-off epoch).
    """
    seeds = list(seeds)
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"run_replicas: repeated seeds {seeds}")
    if start_state is not None and list(start_state["seeds"]) != seeds:
        raise ValueError(f"run_replicas: checkpoint of seeds {list(start_state['seeds'])}, asked for {seeds}")
    device = torch.device(device)
    data = (data or load_dataset(dataset)).to(device)
    if model_cfg.name not in VECTORIZED_MODELS:
        return _run_sequential(lr, batch_size, seeds, dataset, model_cfg, train, report, device, data, start_state)

    gens = [torch.Generator().manual_seed(seed) for seed in seeds]
    active = list(range(len(seeds)))  # positions (in ``seeds``) of the replicas still in the stacks
    status = {seed: RUNNING for seed in seeds}
    first_epoch, examples_seen, steps_done, wall_before = 1, 0, 0, 0.0
    if start_state is not None:
        active = [int(i) for i in start_state["active"]]
        status = {seed: str(st) for seed, st in zip(seeds, start_state["status"])}
        for i, gen_state in enumerate(start_state["order_rng"]):
            gens[i].set_state(gen_state)
        first_epoch = int(start_state["epoch"]) + 1
        examples_seen, steps_done = int(start_state["examples_seen"]), int(start_state["steps"])
        wall_before = float(start_state["wall_s"])
        if not active:  # every replica diverged (or the run had finished): nothing left to train
            torch.set_rng_state(start_state["torch_rng"])
            return status
    # Initialize only the replicas that will train; a checkpoint then overwrites their tensors.
    model = StackedMLP.from_seeds([seeds[i] for i in active], model_cfg, data.input_shape, data.n_classes, device)
    opt = StackedSGD(model.parameters(), lr, train.momentum, train.weight_decay)
    if start_state is not None:
        model.load_state_tensors(start_state["model"])
        opt.params = model.parameters()
        opt.load_state_tensors(start_state["momentum"])
        torch.set_rng_state(start_state["torch_rng"])

    x_train = data.x_train.flatten(1)
    y_train = data.y_train
    n = len(x_train)
    s = batch_size
    steps_per_epoch = n // s
    blowup = train.divergence_factor * math.log(data.n_classes)
    t_start = time.perf_counter()
    for epoch in range(first_epoch, train.epochs + 1):
        t_epoch = time.perf_counter()
        perms = torch.stack([torch.randperm(n, generator=gens[i]) for i in active]).to(device, non_blocking=True)
        k = len(active)
        loss_sum = torch.zeros(k, device=device, dtype=torch.float64)
        correct = torch.zeros(k, device=device, dtype=torch.int64)
        for step in range(steps_per_epoch):
            if max_steps is not None and steps_done >= max_steps:
                return status
            idx = perms[:, step * s:(step + 1) * s]           # (K, S)
            xb, yb = x_train[idx], y_train[idx]                 # (K, S, D), (K, S)
            logits = model(xb, training=True)
            losses = cross_entropy_per_replica(logits, yb)
            opt.zero_grad()
            losses.sum().backward()
            opt.step()
            loss_sum += losses.detach().double() * s
            correct += (logits.detach().argmax(2) == yb).sum(1)
            steps_done += 1
        seen = steps_per_epoch * s
        examples_seen += seen
        train_losses = (loss_sum / seen).tolist()  # GPU sync: once per epoch
        train_accs = (correct.double() / seen).tolist()
        val_losses, val_accs = evaluate_replicas(model, data.x_val, data.y_val, train.eval_batch_size)
        now = time.perf_counter()
        wall_s = wall_before + now - t_start
        rows, keep = [], []
        for j, pos in enumerate(active):
            seed = seeds[pos]
            tl = train_losses[j]
            if not math.isfinite(tl) or tl > blowup:
                status[seed] = DIVERGED
            else:
                keep.append(j)
                if epoch == train.epochs:
                    status[seed] = FINISHED
            rows.append({
                "epoch": epoch, "lr": lr, "batch_size": s, "ratio": lr / s, "seed": seed,
                "n_train": n, "beta": None, "rescale": None, "variant": None, "schedule": "constant",
                "train_loss": tl, "train_acc": train_accs[j],
                "val_loss": val_losses[j], "val_acc": val_accs[j],
                "steps": epoch * steps_per_epoch, "examples_seen": examples_seen,
                "epoch_s": now - t_epoch, "wall_s": wall_s, "status": status[seed],
            })
        # Drop the replicas that diverged before reporting, so the checkpoint holds the survivors.
        if len(keep) < len(active):
            if keep:
                keep_t = torch.tensor(keep, dtype=torch.long)
                model.select(keep_t)
                opt.rebind(model.parameters(), keep_t)
            active = [active[j] for j in keep]

        def state(epoch=epoch, wall_s=wall_s, examples_seen=examples_seen, steps_done=steps_done,
                  active=list(active), status=dict(status)) -> dict[str, Any]:
            return {
                "kind": "replicas", "seeds": list(seeds), "active": active,
                "status": [status[seed] for seed in seeds],
                "model": model.state_tensors() if active else None,
                "momentum": opt.state_tensors() if active else None,
                "order_rng": [g.get_state() for g in gens], "torch_rng": torch.get_rng_state(),
                "epoch": epoch, "steps": steps_done, "examples_seen": examples_seen, "wall_s": wall_s,
            }

        report(rows, state)
        if not active:
            break
    return status


def _run_sequential(lr, batch_size, seeds, dataset, model_cfg, train, report, device, data,
                    start_state=None) -> dict[int, str]:
    """Fallback for models without a vectorized path: one ``run_training`` per seed.

    Its checkpoint is the current seed's ``run_training`` checkpoint plus the position in
    ``seeds`` and the statuses of the seeds already done."""
    from trainables.train_loop import TrialPoint, run_training

    out: dict[int, str] = {}
    first, inner = 0, None
    if start_state is not None:
        first = int(start_state["position"])
        out = {seed: str(st) for seed, st in zip(seeds[:first], start_state["done"])}
        inner = start_state["run"]
        if inner["status"] != RUNNING or int(inner["epoch"]) >= train.epochs:  # that seed had ended
            out[seeds[first]] = str(inner["status"])
            first, inner = first + 1, None
    for i in range(first, len(seeds)):
        seed = seeds[i]

        def rep(row, state, i=i):
            report([row], lambda: {"kind": "sequential", "seeds": list(seeds), "position": i,
                                   "done": [out[s] for s in seeds[:i]], "run": state()})

        out[seed] = run_training(TrialPoint(lr, batch_size, seed), dataset, model_cfg, train, report=rep,
                                 device=device, data=data, start_state=inner if i == first else None)
    return out


def train_replica_trial(config: dict[str, Any], device: torch.device | str = "cpu") -> None:
    """Ray Tune body for a point with ``seeds``: one ``tune.report`` per epoch carrying
    ``replica_rows`` (one row per seed; the driver's metric sink writes each under its own
    trial id) and, for Tune's own bookkeeping, the best val_acc and a summary status.

    Checkpoints as ``train_trial`` does: every ``resilience.checkpoint_every`` epochs and when no
    replica is still running (last epoch, all diverged); a restarted trial continues from
    ``tune.get_checkpoint()``."""
    from trainables.config import from_dict
    from trainables.faults import maybe_fail
    from trainables.train_loop import tune_report, tune_start_state

    point = config["point"]
    checkpoint_every = int(config.get("resilience", {}).get("checkpoint_every", 1))

    def report(rows: list[dict[str, Any]], state: Callable[[], dict[str, Any]]) -> None:
        epoch = rows[0]["epoch"]
        maybe_fail(config, epoch)  # test hook: resilience.fail_at_epoch (trainables/faults.py)
        accs = [r["val_acc"] for r in rows if math.isfinite(r["val_acc"])]
        statuses = {r["status"] for r in rows}
        summary = DIVERGED if statuses == {DIVERGED} else (RUNNING if RUNNING in statuses else FINISHED)
        result = {"replica_rows": rows, "replica_epoch": epoch,
                  "val_acc": max(accs) if accs else float("nan"), "status": summary}
        tune_report(result, state, epoch=epoch, status=summary, checkpoint_every=checkpoint_every)

    run_replicas(
        lr=point["lr"], batch_size=point["batch_size"], seeds=point["seeds"],
        dataset=from_dict(DatasetConfig, config["dataset"]),
        model_cfg=from_dict(ModelConfig, config["model"]),
        train=from_dict(TrainConfig, config["train"]),
        report=report, device=device, start_state=tune_start_state(),
    )
