"""Configuration dataclasses shared by the sweep layer and the trainables.

The sweep spec (``sweeps/spec.py``) validates YAML into these; a Ray Tune trial receives them
as plain dicts (``dataclasses.asdict``) and rebuilds them with ``from_dict``, so the trainables
never import the sweep layer.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

T = TypeVar("T", bound="DataclassInstance")


def from_dict(cls: type[T], data: dict[str, Any] | None) -> T:
    """Rebuild a flat config dataclass from ``dataclasses.asdict`` output (unknown keys dropped).

    ``ModelConfig`` written before ``options`` existed (flat ``depth``, ``width``, ...) is read
    with those keys moved into ``options``, so old run directories still resume.
    """
    data = dict(data or {})
    if cls is ModelConfig:
        legacy = {k: data.pop(k) for k in LEGACY_MODEL_KEYS if k in data}
        if legacy:
            data["options"] = {**legacy_options(data.get("name", "mlp"), legacy), **(data.get("options") or {})}
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def options_key(options: dict[str, Any]) -> str:
    """A stable, hashable key for an ``options`` mapping (caches and cache file names)."""
    return json.dumps(options, sort_keys=True, default=str)


# DatasetConfig and ModelConfig hold an ``options`` dict: frozen (no field reassignment) but not
# hashable; cache on ``options_key(cfg.options)``, never on the config itself.


@dataclass(frozen=True)
class DatasetConfig:
    # A built-in set (trainables/data.py: DATASETS) or "package.module:factory", a function
    # factory(**options) -> {x_train, y_train, x_val, y_val} (trainables/plugins.py).
    name: str = "digits"
    options: dict[str, Any] = field(default_factory=dict)  # the set's own knobs (mnist1d: n_samples, seed)
    n_train: int | None = None  # seeded subset of the training split (None: all of it)
    val_fraction: float | None = None  # carve validation out of train; None: the set's own test split
    data_dir: str = "~/.cache/lrbs/data"
    split_seed: int = 0  # fixes subset and split for every trial of a sweep
    download: bool = True  # torchvision sets only; offline failures say how to pre-download


@dataclass(frozen=True)
class ModelConfig:
    # A built-in model (trainables/models.py: MODELS; mlp | vgg11 | resnet20 | resnet56) or
    # "package.module:factory", a function factory(input_shape, n_classes, **options) -> nn.Module.
    name: str = "mlp"
    options: dict[str, Any] = field(default_factory=dict)  # the model's own hyperparameters


# ModelConfig's fields before ``options`` (still read from old specs and run directories), and
# the ones each built-in of that time takes as options (its options dataclass in models.py).
LEGACY_MODEL_KEYS = ("depth", "width", "batch_norm", "width_mult")
LEGACY_BUILTIN_KEYS = {
    "mlp": ("depth", "width", "batch_norm"),
    "vgg11": ("batch_norm", "width_mult"),
    "resnet20": ("width_mult",),
    "resnet56": ("width_mult",),
}


def legacy_options(name: str, legacy: dict[str, Any]) -> dict[str, Any]:
    """The flat keys of an old ModelConfig that model ``name`` takes as options.

    Old specs and trial configs were written with ``asdict`` and hold all four keys whatever the
    model (an MLP's had ``width_mult``), so a built-in keeps only those its options declare.
    """
    if name not in LEGACY_BUILTIN_KEYS:
        return legacy
    return {k: v for k, v in legacy.items() if k in LEGACY_BUILTIN_KEYS[name]}


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 10
    momentum: float = 0.0
    weight_decay: float = 0.0
    # A trial is 'diverged' when its epoch's train loss is non-finite or exceeds
    # divergence_factor * log(n_classes) (the loss of a uniform guess, in nats per example).
    divergence_factor: float = 10.0
    eval_batch_size: int = 2048  # examples per forward pass in evaluation (memory only)
    # Examples of the training set evaluated in eval mode at the last epoch's weights
    # (train_eval_loss / train_eval_acc); a subset seeded by dataset.split_seed, so the same
    # examples in every trial of a sweep; capped at the training set size.
    train_eval_samples: int = 2000
    # Points trained together in lockstep in one Tune trial (sweeps/packing.py): an int K >= 1,
    # or "auto" (as many as share the batch-size schedule and n_train, up to AUTO_PACK_CAP).
    # Every point still gets its own trial id, rows and status.
    pack: int | str = "auto"
    pack_layout: str = "auto"  # auto | stacked | loop (trainables/packed_models.py)
    cuda_graphs: bool = True  # capture each step as a CUDA graph on GPUs (static shapes)
    # none | crop_flip (random 4-pixel crop + horizontal flip of images; trainables/augment.py).
    # Off by default and in the fig specs: the paper does not state it, and augmentation adds a
    # noise of its own to the SGD noise whose scale eta/S is about (docs/experiments.md).
    augment: str = "none"
    # Numerics of the training steps (PRECISIONS; docs/experiments.md): fp32 (torch's defaults,
    # the paper's setting), tf32 (CUDA only: TF32 matmuls and convolutions) or bf16 (autocast of
    # the forward; weights, SGD state and the loss in fp32). Evaluation and probes run in fp32.
    precision: str = "fp32"


PRECISIONS = ("fp32", "tf32", "bf16")


@dataclass(frozen=True)
class CurvatureConfig:
    """Sharpness probes on a fixed, seeded subset of the training set (batch norm in eval mode).

    The same ``seed`` picks the same examples in every trial of a sweep, so their sharpness
    values are comparable; each trial's random probe vectors are seeded from ``seed`` and its
    own point (``lrbs.trainables.probes.trial_probe_seed``), so their errors are independent.
    """

    n_samples: int = 2000  # probe subset size (capped at the training set size)
    every: str | int = "end"  # "end": after the last epoch; k: every k epochs and at the end
    lanczos_iters: int = 20  # max Lanczos steps (1 HVP each) for lambda_max
    lanczos_tol: float = 1e-4  # relative change of the top Ritz value that counts as converged
    hutchinson_probes: int = 16  # HVPs shared by the trace and Frobenius estimates
    trace_method: str = "hutch++"  # hutch++ (Meyer et al. 2021) | hutchinson (curvature.py)
    noise_scale: bool = True  # also measure the gradient noise scale B_simple
    # "full": B_simple of the whole training set, |G|^2 exact and tr(Sigma) from at least
    # noise_pairs batches of at most noise_b_small examples, in whole passes over the training set
    # (every example once per pass; curvature.gradient_noise_scale_full);
    # "two_batch": McCandlish's two-batch estimator on the probe subset (noise_pairs pairs of
    # noise_b_small and noise_b_big), capped near the subset size and noisier (docs/curvature.md).
    noise_method: str = "full"
    noise_b_small: int = 32  # batch sizes (examples) of the noise-scale estimators
    noise_b_big: int = 512  # two_batch only
    noise_pairs: int = 64  # small batches (full) or pairs (two_batch)
    batch_size: int = 1000  # examples per forward pass inside probes (memory only)
    # Keep the first-order gradient graph of the probe set across Hessian-vector products:
    # ~2x faster probes, memory growing with n_samples (turn off for big convnets on small GPUs).
    retain_graph: bool = True
    seed: int = 0
