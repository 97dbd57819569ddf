"""The one SGD loop: a pack of K >= 1 sweep points trained in lockstep inside one Tune trial.

Data live on the trial's device as tensors; each epoch draws a seeded ``randperm`` per member and
batches are index slices of it (airbench style: no DataLoader, no per-item Python in the hot
loop). The members' models are one ``lrbs.trainables.packed_models`` pack, so a step of K members is
one forward, one backward and one update, captured as a CUDA graph on GPUs. ``run_pack`` (and
``run_training``, a pack of one) is plain Python with a ``report`` callback so it can be tested
and benchmarked without Ray; ``train_trial`` is the Ray Tune function trainable around it, with
checkpoints that let a restarted trial continue the same batch orders.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import torch
import torch.nn.functional as F

from lrbs.rundir.schema import check_row
from lrbs.trainables import augment
from lrbs.trainables.config import PRECISIONS, CurvatureConfig, DatasetConfig, ModelConfig, TrainConfig, from_dict
from lrbs.trainables.curvature import probe_subset
from lrbs.trainables.data import load_dataset
from lrbs.trainables.models import build_model
from lrbs.trainables.pack_sgd import PackSGD
from lrbs.trainables.packed_models import Pack, build_pack, choose_layout
from lrbs.trainables.probes import probe_due, run_probes, trial_probe_seed
from lrbs.trainables.schedules import ScheduleConfig, schedule_at, schedule_from_dict
from lrbs.trainables.tensor_data import TensorData

# Row status values (the ``status`` column of the metric tables).
RUNNING, FINISHED, DIVERGED = "running", "finished", "diverged"
CHECKPOINT_FILE = "state.pt"

# report(row, state): ``state()`` builds the checkpoint dict; a reporter that does not
# checkpoint never calls it, so plain runs pay nothing for it.
Reporter = Callable[[dict[str, Any], Callable[[], dict[str, Any]]], None]
PackReporter = Callable[[list[dict[str, Any]], Callable[[], dict[str, Any]]], None]


@dataclass(frozen=True)
class TrialPoint:
    """What varies between the trials of a sweep (see ``lrbs.sweeps.spec.expand_points``)."""

    lr: float
    batch_size: int
    seed: int
    beta: float | None = None  # beta family member: lr = lr0*beta, S = S0*beta (Fig. 5)
    rescale: str | None = None  # rescaling rule that derived lr from S (Fig. 2)
    n_train: int | None = None  # per-point training-set size (overrides dataset.n_train)
    variant: str | None = None  # label of a named explicit point (Fig. 1)
    schedule: dict[str, Any] | None = None  # per-point schedule (replaces the sweep's schedule)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrialPoint:
        return from_dict(cls, data)


def pick_device(gpus: float) -> torch.device:
    # Ray sets CUDA_VISIBLE_DEVICES for trials that asked for a GPU (or a fraction of one).
    return torch.device("cuda") if gpus > 0 and torch.cuda.is_available() else torch.device("cpu")


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a ``train.precision`` this trial cannot train in (ValueError naming the key)."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision: must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if precision == "tf32" and device.type != "cuda":
        raise ValueError(f"train.precision: tf32 is a CUDA mode (TF32 tensor cores); this trial runs on {device}")


@contextlib.contextmanager
def step_numerics(precision: str) -> Iterator[None]:
    """The global math settings of the training steps: under ``tf32``, TF32 matmuls and cuDNN
    convolutions, restored afterwards (evaluation, probes and the next trial in this worker
    process keep torch's defaults). ``fp32`` and ``bf16`` change nothing global: fp32 is torch's
    defaults as they are, bf16 is an autocast around each step's forward (``Steps``)."""
    if precision != "tf32":
        yield
        return
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:  # torch's legacy flags, unless this process set TF32 through the newer fp32_precision API
        saved = matmul.allow_tf32, cudnn.allow_tf32  # (reading the legacy ones then raises)
    except RuntimeError:
        conv = cudnn.conv  # type: ignore[attr-defined]  # added by torch at import, not in its stubs
        saved_new = matmul.fp32_precision, conv.fp32_precision
        matmul.fp32_precision = conv.fp32_precision = "tf32"
        try:
            yield
        finally:
            matmul.fp32_precision, conv.fp32_precision = saved_new
        return
    matmul.allow_tf32 = cudnn.allow_tf32 = True
    try:
        yield
    finally:
        matmul.allow_tf32, cudnn.allow_tf32 = saved


def _cross_entropy_per_member(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(K, B, C) logits, (K, B) labels -> (K,) mean cross-entropy of each member (nats per example)."""
    k, b, c = logits.shape
    return F.cross_entropy(logits.reshape(k * b, c), y.reshape(k * b), reduction="none").view(k, b).mean(1)


@torch.no_grad()
def evaluate_pack(pack: Pack, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[list[float], list[float]]:
    """Per-member mean cross-entropy and accuracy on shared data, batch norm in inference mode."""
    loss_sum = torch.zeros(pack.k, device=x.device, dtype=torch.float64)
    correct = torch.zeros(pack.k, device=x.device, dtype=torch.int64)
    for start in range(0, len(x), batch_size):
        logits = pack.forward(x[start : start + batch_size], training=False)  # (K, B, C)
        yb = y[start : start + batch_size]
        for j in range(pack.k):  # one reduction per member: the same float32 sums whatever K is
            loss_sum[j] += F.cross_entropy(logits[j], yb, reduction="sum").double()
        correct += (logits.argmax(2) == yb).sum(1)
    n = max(len(x), 1)
    return (loss_sum / n).tolist(), (correct.double() / n).tolist()  # GPU sync point: once per evaluation


class Steps:
    """One SGD step of every member, eager or replayed from a CUDA graph.

    The step adds each member's mean loss to ``loss_sum`` and its hits to a (K, S) counter per
    batch size; every tensor it touches keeps its address until members leave (``reset``), which
    is what lets a captured graph replay it. One graph per batch
    size; ``WARMUP`` real steps run eagerly on a side stream before each capture (lazy cuBLAS and
    autograd set-up must not happen inside it), so a graphed epoch trains exactly the same steps.
    """

    WARMUP = 2

    def __init__(
        self,
        pack: Pack,
        opt: PackSGD,
        x_train: torch.Tensor,
        y_train: torch.Tensor,
        use_graphs: bool,
        precision: str = "fp32",
    ):
        self.pack, self.opt, self.x, self.y = pack, opt, x_train, y_train
        self.use_graphs = use_graphs and x_train.is_cuda
        self.bf16 = precision == "bf16"
        self.reset()

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16: autocast of the forward (matmuls and convolutions in bf16, weights stay fp32).
        No cast cache: a captured CUDA graph must cast the weights it reads at every replay."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.x.device.type, dtype=torch.bfloat16, cache_enabled=False)

    def reset(self) -> None:
        self.loss_sum = torch.zeros(self.pack.k, device=self.x.device, dtype=torch.float64)
        self.hits: dict[int, torch.Tensor] = {}  # per batch size: (K, S) correct predictions, summed per epoch
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor | None]] = {}

    def _step(self, idx: torch.Tensor, aug: torch.Tensor | None = None) -> None:
        xb, yb = self.x[idx], self.y[idx]  # (K, S, ...), (K, S)
        if aug is not None:  # (K, S, 3) crop/flip draws of these examples (trainables/augment.py)
            k, s = idx.shape
            xb = augment.apply(xb.flatten(0, 1), aug.flatten(0, 1)).view(k, s, *xb.shape[2:])
        if self.bf16 and xb.dim() == 5:  # (K, S, C, H, W): each member's images channels_last
            xb = xb.flatten(0, 1).contiguous(memory_format=torch.channels_last).view(xb.shape)
        with self._autocast():
            logits = self.pack.forward(xb, training=True)
        # The loss from fp32 logits (a no-op in fp32): log-softmax, means and sums in fp32.
        logits = logits.float()
        losses = _cross_entropy_per_member(logits, yb)  # member k's parameters get only L_k's gradient
        grads = torch.autograd.grad(self.opt.objective(losses), self.pack.params)
        self.opt.step(self.pack.params, grads)
        with torch.no_grad():  # accumulated on the device: reading them would sync the GPU every step
            self.loss_sum.add_(losses.detach())  # float64 sum of per-step means (x S at the epoch's end)
            self.hits[idx.shape[1]].add_(logits.argmax(2) == yb)

    @property
    def correct(self) -> torch.Tensor:
        """(K,) correct predictions of the epoch so far."""
        return torch.stack([h.sum(1) for h in self.hits.values()]).sum(0)

    def epoch(self, perms: torch.Tensor, s: int, n_steps: int, augs: torch.Tensor | None = None) -> None:
        """``perms`` (K, N) batch order; ``augs`` (K, N, 3) augmentation draws (None: none)."""

        def aug(lo: int, hi: int) -> torch.Tensor | None:
            return None if augs is None else augs[:, lo:hi]

        self.loss_sum.zero_()
        for h in self.hits.values():
            h.zero_()
        if s not in self.hits:
            self.hits[s] = torch.zeros(self.pack.k, s, device=self.x.device, dtype=torch.int64)
        first = 0
        if self.use_graphs and s not in self.graphs and n_steps > self.WARMUP:
            stream = torch.cuda.Stream()  # type: ignore[no-untyped-call]  # unannotated in torch
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for first in range(self.WARMUP):
                    self._step(perms[:, first * s : (first + 1) * s], aug(first * s, (first + 1) * s))
            torch.cuda.current_stream().wait_stream(stream)
            first = self.WARMUP
            static_idx = perms[:, :s].clone()
            static_aug = None if augs is None else augs[:, :s].clone()
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(graph):  # recorded, not run: step `first` runs at its replay below
                    self._step(static_idx, static_aug)
                self.graphs[s] = (graph, static_idx, static_aug)
            except RuntimeError as exc:  # a model the graph cannot hold: train eagerly, same steps
                warnings.warn(f"CUDA graph capture failed, training eagerly: {str(exc).splitlines()[0]}", stacklevel=2)
                self.use_graphs = False
        if s in self.graphs:
            graph, static_idx, static_aug = self.graphs[s]
            for step in range(first, n_steps):
                static_idx.copy_(perms[:, step * s : (step + 1) * s])
                if static_aug is not None and augs is not None:
                    static_aug.copy_(augs[:, step * s : (step + 1) * s])
                graph.replay()
        else:
            for step in range(first, n_steps):
                self._step(perms[:, step * s : (step + 1) * s], aug(step * s, (step + 1) * s))
        self.pack.count_batches(n_steps)


def run_pack(
    points: Sequence[TrialPoint],
    dataset: DatasetConfig,
    model_cfg: ModelConfig,
    train: TrainConfig,
    report: PackReporter,
    device: torch.device | str = "cpu",
    data: TensorData | None = None,
    schedule: ScheduleConfig | None = None,
    probes: CurvatureConfig | None = None,
    start_state: dict[str, Any] | None = None,
    max_steps: int | None = None,
) -> list[str]:
    """Train the K ``points`` in lockstep with plain SGD; returns each member's status.

    Every member is the run its point would be alone: initialized after ``torch.manual_seed(seed)``,
    its own batch order (a CPU generator seeded with its seed), its own learning-rate schedule,
    batch-norm statistics and divergence. The members share the data and the batch size of every
    epoch (``lrbs.sweeps.packing`` only packs points whose batch-size schedules and n_train agree).
    Steps per epoch are ``floor(N / S)`` so every step sees exactly S examples: the SDE argument
    is about the noise of an S-example mean, and a ragged last batch would change it.

    After every epoch ``report(rows, state)`` gets one row per member still training (a member
    that diverged in that epoch is in it a last time, with status ``diverged``, and then leaves
    the pack), each with ``member`` (its index in ``points``); the last epoch's rows of members
    that did not diverge also hold ``train_eval_loss`` / ``train_eval_acc``, their final weights
    evaluated in eval mode on ``train.train_eval_samples`` training examples seeded by
    ``dataset.split_seed`` (the same examples in every trial); ``state()`` builds the checkpoint
    (tensors and plain data only). ``start_state`` continues from such a checkpoint with the rows
    an uninterrupted run would report. ``max_steps`` stops after that many steps (benchmarks).
    """
    points = list(points)
    device = torch.device(device)
    check_precision(train.precision, device)
    scheds = [schedule_from_dict(p.schedule) if p.schedule else (schedule or ScheduleConfig()) for p in points]
    if len({p.n_train for p in points}) > 1:
        raise ValueError(f"run_pack: members differ in n_train {[p.n_train for p in points]}")
    if points[0].n_train is not None:
        dataset = dataclasses.replace(dataset, n_train=points[0].n_train)
    data = (data or load_dataset(dataset)).to(device)
    gens = [torch.Generator().manual_seed(p.seed) for p in points]
    status = [RUNNING] * len(points)
    first_epoch, examples_seen, steps, wall_before = 1, 0, 0, 0.0
    if start_state is not None:
        if start_state.get("format") != "pack-v1":
            raise ValueError(
                "run_pack: checkpoint written by an older lrbs (no pack format); restart the trial "
                "from scratch (lrbs resume --restart-errored)"
            )
        if len(start_state["members"]) != len(points):
            raise ValueError(f"run_pack: checkpoint of {len(start_state['members'])} members for {len(points)} points")
        for gen, m in zip(gens, start_state["members"]):
            gen.set_state(m["order_rng"])
        status = [str(m["status"]) for m in start_state["members"]]
        first_epoch = int(start_state["epoch"]) + 1
        examples_seen, steps = int(start_state["examples_seen"]), int(start_state["steps"])
        wall_before = float(start_state["wall_s"])
    active = [j for j, st in enumerate(status) if st == RUNNING]
    modules = []
    for j in active:  # only the members that will train; a checkpoint then overwrites their weights
        torch.manual_seed(points[j].seed)  # initialization, as an unpacked run does it
        modules.append(build_model(model_cfg, data.input_shape, data.n_classes).to(device).train())
        if start_state is not None:
            modules[-1].load_state_dict(start_state["members"][j]["model"])
        if train.precision == "bf16":  # convolution weights channels_last (tensor-core layout); others as they are
            modules[-1].to(memory_format=torch.channels_last)
    if start_state is not None:
        torch.set_rng_state(start_state["torch_rng"])
    if not active or first_epoch > train.epochs:
        return status
    rank = len(data.input_shape)
    pack = build_pack(modules, choose_layout(model_cfg, train.pack_layout), rank)
    opt = PackSGD(pack, len(active), device, train.momentum, train.weight_decay)
    if start_state is not None and opt.bufs is not None:
        opt.bufs = pack.aligned_from_members([start_state["members"][j]["momentum"] for j in active], opt.bufs)
    # Probes run on a plain module reloaded with each member's weights: the unpacked run's code.
    probe_model = copy.deepcopy(modules[0]) if probes is not None else None
    stepper = Steps(pack, opt, data.x_train, data.y_train, train.cuda_graphs, train.precision)
    n = len(data.x_train)
    blowup = train.divergence_factor * math.log(data.n_classes)  # nats per example
    # The train-eval subset: seeded by the data split, not the trial, so every trial of a sweep
    # (every member of every pack) is evaluated on the same training examples.
    eval_idx = probe_subset(n, min(train.train_eval_samples, n), dataset.split_seed).to(device)
    t_start = time.perf_counter()
    for epoch in range(first_epoch, train.epochs + 1):
        t_epoch = time.perf_counter()
        plan = [schedule_at(scheds[j], epoch - 1, points[j].lr, points[j].batch_size) for j in active]
        s = plan[0][1]
        if any(size != s for _, size in plan):
            raise ValueError(f"run_pack: members' batch sizes differ at epoch {epoch}: {[b for _, b in plan]}")
        opt.set_lr([lr for lr, _ in plan])
        n_steps = n // s
        if max_steps is not None:
            n_steps = min(n_steps, max_steps - steps)
        perms = torch.stack([torch.randperm(n, generator=gens[j]) for j in active]).to(device, non_blocking=True)
        # Augmentation draws follow each member's permutation in its own generator stream.
        draws = [d for j in active if (d := augment.draw(train.augment, n, gens[j])) is not None]
        augs = torch.stack(draws).to(device, non_blocking=True) if draws else None
        with step_numerics(train.precision):
            stepper.epoch(perms, s, n_steps, augs)
        if max_steps is not None and steps + n_steps >= max_steps:
            return status  # cut off: no row for a partial epoch
        seen = n_steps * s
        examples_seen += seen
        steps += n_steps
        train_losses = (stepper.loss_sum * s / seen).tolist()  # GPU sync point: once per epoch
        train_accs = (stepper.correct.double() / seen).tolist()
        val_losses, val_accs = evaluate_pack(pack, data.x_val, data.y_val, train.eval_batch_size)
        if epoch == train.epochs:  # the final weights: every member in one pass over the subset, one sync
            train_eval = evaluate_pack(pack, data.x_train[eval_idx], data.y_train[eval_idx], train.eval_batch_size)
        rows, keep = [], []
        for i, j in enumerate(active):
            p, (lr, _) = points[j], plan[i]
            if not math.isfinite(train_losses[i]) or train_losses[i] > blowup:
                status[j] = DIVERGED
            else:
                keep.append(i)
                status[j] = FINISHED if epoch == train.epochs else RUNNING
            row: dict[str, Any] = {
                "member": j,
                "epoch": epoch,
                "lr": lr,
                "batch_size": s,
                "ratio": lr / s,
                "seed": p.seed,
                "n_train": n,
                "beta": p.beta,
                "rescale": p.rescale,
                "variant": p.variant,
                "schedule": scheds[j].kind,
                "train_loss": train_losses[i],
                "train_acc": train_accs[i],
                "val_loss": val_losses[i],
                "val_acc": val_accs[i],
                "steps": steps,
                "examples_seen": examples_seen,
                "precision": train.precision,
            }
            if epoch == train.epochs and status[j] != DIVERGED:
                row.update(train_eval_loss=train_eval[0][i], train_eval_acc=train_eval[1][i])
            # No probes on a diverged model: its Hessian is not a minimum's (and may be NaN).
            if status[j] != DIVERGED and probe_due(probes, epoch, train.epochs):
                assert probes is not None and probe_model is not None  # probe_due: probes are on
                probe_model.load_state_dict(pack.member_state(i))
                probed = run_probes(
                    probe_model,
                    data,
                    probes,
                    trial_probe_seed(probes.seed, p.lr, p.batch_size, p.seed, p.beta, p.rescale, p.variant, n),
                )
                if probed.get("probe_error"):  # the row keeps the error and null probe columns; training goes on
                    print(
                        f"[lrbs] probes failed at epoch {epoch} (lr {p.lr:g}, S {p.batch_size}, seed {p.seed}): "
                        f"{probed['probe_error']}",
                        file=sys.stderr,
                        flush=True,
                    )
                row.update(probed)
            rows.append(row)
        now = time.perf_counter()
        for row in rows:
            row.update(epoch_s=now - t_epoch, wall_s=wall_before + now - t_start, status=status[row["member"]])
        if len(keep) < len(active):  # diverged members leave before the checkpoint is taken
            if keep:
                pack.select(keep)
                opt.select(pack, keep)
                stepper.reset()
            active = [active[i] for i in keep]

        def state(
            epoch: int = epoch,
            wall_s: float = rows[0]["wall_s"],
            examples_seen: int = examples_seen,
            steps: int = steps,
            active: list[int] = list(active),  # noqa: B006 -- defaults snapshot this epoch for the checkpoint
            status: list[str] = list(status),  # noqa: B006
        ) -> dict[str, Any]:
            members = []
            for j in range(len(points)):
                i = active.index(j) if j in active else None
                members.append(
                    {
                        "status": status[j],
                        "order_rng": gens[j].get_state(),
                        "model": pack.member_state(i) if i is not None else None,
                        "momentum": pack.member_tensors(opt.bufs, i)
                        if i is not None and opt.bufs is not None
                        else None,
                    }
                )
            return {
                "format": "pack-v1",
                "members": members,
                "torch_rng": torch.get_rng_state(),
                "epoch": epoch,
                "steps": steps,
                "examples_seen": examples_seen,
                "wall_s": wall_s,
            }

        for row in rows:
            check_row(row)  # an undeclared probe or metric column is an error, never silently dropped
        report(rows, state)
        if not active:
            break
    return status


def run_training(
    point: TrialPoint,
    dataset: DatasetConfig,
    model_cfg: ModelConfig,
    train: TrainConfig,
    report: Reporter,
    **kwargs: Any,
) -> str:
    """One point alone: a pack of one (same arguments as ``run_pack``), ``report(row, state)``."""
    return run_pack([point], dataset, model_cfg, train, lambda rows, state: report(rows[0], state), **kwargs)[0]


def load_state(directory: str | Path) -> dict[str, Any]:
    """A checkpoint written by ``train_trial``; tensors and plain data only (no unpickling of code).
    ``directory`` may be a URI (``lrbs resume`` of a run directory in object storage)."""
    source: io.BytesIO | Path = Path(directory) / CHECKPOINT_FILE
    if "://" in str(directory):
        fs, path = pafs.FileSystem.from_uri(str(directory))
        with fs.open_input_stream(f"{path.rstrip('/')}/{CHECKPOINT_FILE}") as f:
            source = io.BytesIO(f.read())
    state: dict[str, Any] = torch.load(source, map_location="cpu", weights_only=True)
    return state


def first_loadable_state(directories: list[str | Path], max_epoch: int | None = None) -> dict[str, Any] | None:
    """The state of the first checkpoint folder that loads (newest first) and is from epoch
    ``max_epoch`` or before; a damaged one (cut off by a full disk or a kill while it was written)
    is skipped with a warning. None if none qualifies: the trial then starts from scratch and its
    new rows supersede the old ones."""
    for directory in directories:
        try:
            state = load_state(directory)
        except Exception as exc:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
            if isinstance(exc, OSError) and "://" in str(directory) and not isinstance(exc, FileNotFoundError):
                raise  # the store unreachable, not a damaged checkpoint: fail, and Tune retries the trial
            why = f"does not load ({type(exc).__name__}: {str(exc)[:200]})"
        else:
            if max_epoch is None or int(state.get("epoch", 0)) <= max_epoch:
                return state
            why = f"is from epoch {state.get('epoch')}, past the last epoch with rows ({max_epoch})"
        print(f"[lrbs] checkpoint {directory} {why}; trying the one before it", file=sys.stderr, flush=True)
    if directories:
        print(
            f"[lrbs] no usable checkpoint of this trial ({len(directories)} tried); starting from scratch",
            file=sys.stderr,
            flush=True,
        )
    return None
