"""Training one model on one fold, from decoded images held as a uint8 tensor.

The loop avoids per-step host synchronisation: the loss is summed on the device and checked for
non-finite values once per epoch. Batches are gathered from the in-memory tensor and augmented as
a batch (see ``augment.py``), so no DataLoader workers or per-image decoding are involved.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import timm.data
import timm.optim
import timm.scheduler
import torch

from maskopt.search.train import metrics
from maskopt.search.train.augment import BatchAugment
from maskopt.search.train.losses import LOSSES
from maskopt.search.train.models import build_model
from maskopt.search.train.params import TrainConfig, TrialParams
from maskopt.search.train.sampling import CLASS_SAMPLERS


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class FoldResult:
    """What one fold's training produced.

    ``best_*`` refer to the epoch with the highest validation macro F1 (epochs count from 1).
    """

    best_f1: float = 0.0
    best_accuracy: float = 0.0
    best_epoch: int = 0
    best_probs: np.ndarray | None = None  # float32 [validation rows, classes] at the best epoch
    f1_history: list[float] = field(default_factory=list)
    images_per_second: float = 0.0
    epochs_trained: int = 0

    @property
    def best_predictions(self) -> np.ndarray | None:
        return None if self.best_probs is None else self.best_probs.argmax(1)


@dataclass(frozen=True)
class TrainingData:
    """Tensors for one fold: images are ``uint8 [N, 3, S, S]``, indices select rows."""

    images: torch.Tensor
    train_rows: np.ndarray
    train_labels: np.ndarray  # training labels (may use a shifted age cut)
    val_rows: np.ndarray
    val_labels: np.ndarray  # official labels, what the score is measured on


class UnusableCheckpoint(ValueError):
    """A saved fold state that cannot be resumed (other shapes, a malformed structure)."""


@dataclass(frozen=True)
class FoldState:
    """Where a fold's training stands after an epoch: what ``train_fold(resume=...)`` continues from.

    ``to_state``/``from_state`` give its plain form (tensors, numbers, dicts and lists), which
    ``torch.load(weights_only=True)`` reads back; the keys are those of every checkpoint written
    so far, so older checkpoints still resume.
    """

    accumulation: int
    model: dict
    optimizer: dict
    scheduler: dict
    scaler: dict
    generator: torch.Tensor
    torch_rng: torch.Tensor
    cuda_rng: torch.Tensor | None
    result: FoldResult
    train_seconds: float
    images_seen: int
    num_updates: int

    def to_state(self) -> dict:
        result = dataclasses.asdict(self.result)
        if self.result.best_probs is not None:
            result["best_probs"] = torch.from_numpy(self.result.best_probs)
        return {**{f.name: getattr(self, f.name) for f in dataclasses.fields(self)}, "result": result}

    @classmethod
    def from_state(cls, state) -> FoldState:
        """The fold state of a checkpoint's plain form.

        Raises:
            UnusableCheckpoint: A missing key or a value of the wrong kind.
        """
        try:
            result = dict(state["result"])
            probs = result["best_probs"]
            if probs is not None and not isinstance(probs, torch.Tensor):
                raise TypeError("best_probs is not a tensor")
            result = FoldResult(**{**result, "best_probs": None if probs is None else probs.numpy(),
                                   "f1_history": [float(v) for v in result["f1_history"]]})
            fields = {f.name: state[f.name] for f in dataclasses.fields(cls) if f.name != "result"}
            for key in ("model", "optimizer", "scheduler", "scaler"):
                if not isinstance(fields[key], dict):
                    raise TypeError(f"{key} is not a mapping")
            for key in ("generator", "torch_rng"):
                if not isinstance(fields[key], torch.Tensor):
                    raise TypeError(f"{key} is not a tensor")
            if type(fields["accumulation"]) is not int or fields["accumulation"] < 1:
                raise TypeError("accumulation is not a positive integer")
            return cls(**fields, result=result)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise UnusableCheckpoint(f"its training state is malformed ({type(e).__name__}: {str(e)[:200]})") from e


def is_out_of_memory(error: BaseException) -> bool:
    """True for CUDA and host allocation failures."""
    if isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def autocast_dtype(device: torch.device, settings: TrainConfig) -> torch.dtype | None:
    """bf16 where the GPU supports it, fp16 (with a grad scaler) otherwise; None on the CPU."""
    if device.type != "cuda" or not settings.amp:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def fast_path(device: torch.device, settings: TrainConfig) -> dict:
    """The fast-path settings a trial actually runs with, for its attributes (AMP and compile only on CUDA)."""
    on_cuda = device.type == "cuda"
    amp = autocast_dtype(device, settings)
    return {"amp": str(amp).removeprefix("torch.") if amp else "off",
            "channels_last": settings.channels_last,
            "compile": on_cuda and settings.compile,
            "cudnn_benchmark": on_cuda and torch.backends.cudnn.benchmark}


def train_fold(
    params: TrialParams,
    data: TrainingData,
    *,
    config: TrainConfig,
    num_classes: int,
    device: torch.device,
    seed: int,
    accumulation: int = 1,
    on_epoch: Callable[[int, float, float], None] | None = None,
    on_checkpoint: Callable[[FoldState], None] | None = None,
    resume: FoldState | None = None,
    progress=None,
) -> tuple[FoldResult, torch.nn.Module]:
    """Train ``params`` on the fold's training rows, scoring the validation rows every epoch.

    Args:
        params: The configuration.
        data: Images and row indices of the fold.
        config: Epochs, warm-up, weights and GPU options.
        num_classes: Classes of the dataset.
        device: Where to train.
        seed: Seeds weights, sampling order and augmentation.
        accumulation: Gradient accumulation steps; the micro-batch is
            ``batch_size // accumulation`` so the effective batch stays ``batch_size``.
        on_epoch: Called with (epoch from 0, macro F1, accuracy) after each epoch; may raise
            ``optuna.TrialPruned`` to stop.
        on_checkpoint: Called after each scored epoch, before ``on_epoch``, with the state
            that ``resume`` takes to continue from there (see ``checkpoints.py``).
        resume: A state given to ``on_checkpoint`` by an earlier run of this fold: training
            continues after its epoch and, on the CPU, ends exactly as an uninterrupted run.
        progress: A tqdm bar advanced once per epoch, or None.

    Returns:
        The fold's result and the trained model (weights of the last epoch).

    Raises:
        NonFiniteLoss: The loss became NaN or infinite.
    """


    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = build_model(
        params.backbone, num_classes=num_classes, head=params.head, pretrained=config.pretrained,
        weights=config.weights, freeze_depth=params.freeze_depth,
    ).to(device)
    on_cuda = device.type == "cuda"
    if config.channels_last:  # oneDNN on the CPU too: 1.5x the training images/s of EfficientNet-Lite0
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if on_cuda and config.compile else model
    mean, std = normalisation(model, device)

    micro_batch = max(1, params.batch_size // accumulation)
    n_train = len(data.train_rows)
    # Drop a last micro-batch of one image: BatchNorm cannot train on a single sample.
    steps = n_train // micro_batch if n_train % micro_batch == 1 and n_train > micro_batch else math.ceil(n_train / micro_batch)
    updates_per_epoch = max(1, steps // accumulation)
    optimizer = timm.optim.create_optimizer_v2(model, opt=params.optimizer, lr=params.lr,
                                               weight_decay=params.weight_decay)
    scheduler = timm.scheduler.CosineLRScheduler(
        optimizer, t_initial=config.epochs * updates_per_epoch, lr_min=params.lr * 0.01,
        warmup_t=int(config.warmup_epochs * updates_per_epoch), warmup_lr_init=params.lr * 0.01,
        warmup_prefix=True, t_in_epochs=False,
    )
    amp_dtype = autocast_dtype(device, config)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype is torch.float16)
    augment = BatchAugment(params.aug_strength, image_size=data.images.shape[-1])
    criterion = LOSSES[params.loss]
    train_labels = torch.as_tensor(data.train_labels, device=device)
    train_rows = torch.as_tensor(data.train_rows)
    buffers = BatchBuffers()

    result = FoldResult()
    train_seconds, images_seen, num_updates, first_epoch = 0.0, 0, 0, 0
    if resume is not None:
        try:
            model.load_state_dict(resume.model)
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
            scaler.load_state_dict(resume.scaler)
            generator.set_state(resume.generator)
            torch.set_rng_state(resume.torch_rng)  # dropout and drop-path draw from it
            if on_cuda and resume.cuda_rng is not None:
                torch.cuda.set_rng_state(resume.cuda_rng, device)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise UnusableCheckpoint(f"it does not fit this model and optimiser ({type(e).__name__}: "
                                     f"{str(e)[:200]})") from e
        result = dataclasses.replace(resume.result, f1_history=list(resume.result.f1_history))
        train_seconds, images_seen, num_updates = resume.train_seconds, resume.images_seen, resume.num_updates
        first_epoch = result.epochs_trained
        if progress is not None:
            progress.update(first_epoch)
    for epoch in range(first_epoch, config.epochs):
        model.train()
        started = time.perf_counter()
        order = CLASS_SAMPLERS[params.sampler](data.train_labels, generator)
        loss_sum = torch.zeros((), device=device)
        optimizer.zero_grad(set_to_none=True)
        for step in range(steps):
            pos = order[step * micro_batch:(step + 1) * micro_batch]
            x = prepare_batch(data.images, train_rows[pos], device, mean, std, augment=augment, generator=generator,
                              channels_last=config.channels_last, buffers=buffers)
            with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                loss = criterion(step_model(x), train_labels[pos.to(device)]) / accumulation
            scaler.scale(loss).backward()
            loss_sum += loss.detach()
            if (step + 1) % accumulation == 0 or step + 1 == steps:
                scaler.step(optimizer)
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                num_updates += 1
                scheduler.step_update(num_updates)
            images_seen += len(pos)
        if on_cuda:
            torch.cuda.synchronize()  # so the epoch's time covers its kernels
        if not torch.isfinite(loss_sum):  # one host sync per epoch, not per step
            raise NonFiniteLoss(f"training loss became {loss_sum.item()} in epoch {epoch + 1}")
        train_seconds += time.perf_counter() - started
        result.epochs_trained = epoch + 1
        if progress is not None:
            progress.update(1)
        if len(data.val_rows) == 0:  # retraining on all data: nothing to score
            continue
        probs = predict_rows(step_model, data.images, data.val_rows, device, mean, std,
                             batch_size=max(micro_batch * 2, 32), amp_dtype=amp_dtype,
                             channels_last=config.channels_last).numpy()
        predictions = probs.argmax(1)
        f1 = metrics.macro_f1(data.val_labels, predictions, n_classes=probs.shape[1])  # PRESENT, as every score
        accuracy = float(np.mean(predictions == data.val_labels))
        result.f1_history.append(f1)
        if f1 > result.best_f1 or result.best_epoch == 0:
            result.best_f1, result.best_accuracy, result.best_epoch = f1, accuracy, epoch + 1
            result.best_probs = probs
        if progress is not None:
            progress.set_postfix(f1=f"{f1:.3f}")
        if on_checkpoint is not None:
            on_checkpoint(FoldState(
                accumulation=accumulation, model=model.state_dict(), optimizer=optimizer.state_dict(),
                scheduler=scheduler.state_dict(), scaler=scaler.state_dict(), generator=generator.get_state(),
                torch_rng=torch.get_rng_state(), cuda_rng=torch.cuda.get_rng_state(device) if on_cuda else None,
                result=dataclasses.replace(result, f1_history=list(result.f1_history)), train_seconds=train_seconds,
                images_seen=images_seen, num_updates=num_updates))
        if on_epoch is not None:
            on_epoch(epoch, f1, accuracy)
    result.images_per_second = images_seen / train_seconds if train_seconds else 0.0
    return result, model


def train_full(params: TrialParams, images: torch.Tensor, labels: np.ndarray, *, config: TrainConfig,
               epochs: int, num_classes: int, device: torch.device, seed: int, progress=None) -> torch.nn.Module:
    """Train on every row (no hold-out) for ``epochs`` epochs; used to retrain the best trial."""
    rows = np.arange(len(labels))
    data = TrainingData(images, rows, labels, rows[:0], labels[:0])
    _, model = train_fold(params, data, config=dataclasses.replace(config, epochs=epochs),
                          num_classes=num_classes, device=device, seed=seed, progress=progress)
    return model


def mean_std(model) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Normalisation mean and std from timm's data config of the backbone."""

    config = timm.data.resolve_model_data_config(model.model)
    return tuple(config["mean"]), tuple(config["std"])


def normalisation(model, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std of ``model``'s backbone, shaped ``[1, 3, 1, 1]`` for broadcasting."""
    mean, std = mean_std(model)
    return (torch.tensor(mean, device=device).view(1, 3, 1, 1), torch.tensor(std, device=device).view(1, 3, 1, 1))


class BatchBuffers:
    """Memory for CPU batches, allocated once and reused by every batch of a loop.

    A fresh batch-sized float tensor per step is large enough for glibc to map it from the
    kernel and unmap it when freed, so every batch page-faults all of its pages again; on the
    CPU that costs several times the arithmetic of normalising it (BENCHMARKS.md, data path).
    Reuse is safe because a step's backward, the last reader of the batch, finishes before the
    next batch is gathered. On CUDA the caching allocator already reuses memory, so the buffers
    are used only when both the images and the batch live on the CPU.
    """

    def __init__(self) -> None:
        self._u8: torch.Tensor | None = None
        self._f32: torch.Tensor | None = None

    def views(self, images: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A uint8 and a float32 view of ``n`` images shaped like ``images``' rows."""
        if self._u8 is None or len(self._u8) < n or self._u8.shape[1:] != images.shape[1:]:
            self._u8 = torch.empty((n, *images.shape[1:]), dtype=torch.uint8)
            self._f32 = torch.empty((n, *images.shape[1:]), dtype=torch.float32)
        return self._u8[:n], self._f32[:n]


def prepare_batch(images: torch.Tensor, rows: torch.Tensor, device: torch.device, mean, std, *, augment=None,
                  generator=None, channels_last: bool = False, buffers: BatchBuffers | None = None) -> torch.Tensor:
    """Gather rows of the uint8 image tensor, move, augment and normalise them.

    With ``buffers`` (on the CPU) the batch is written into them: the result is overwritten by
    the next call with the same buffers.
    """
    if buffers is not None and images.device.type == "cpu" and device.type == "cpu":
        u8, x = buffers.views(images, len(rows))
        torch.index_select(images, 0, rows, out=u8)
        x = x.copy_(u8).div_(255)
    else:
        x = images[rows.to(images.device)].to(device, non_blocking=True).float().div_(255)
    if augment is not None:
        x = augment(x, generator)
    x = x.sub_(mean).div_(std)  # in place: the batch is this call's own memory
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@torch.inference_mode()
def predict_rows(model: torch.nn.Module, images: torch.Tensor, rows: np.ndarray, device: torch.device, mean, std, *,
                 batch_size: int, amp_dtype=None, channels_last: bool = False, flip: bool = False) -> torch.Tensor:
    """Class probabilities ``[len(rows), C]`` (on the CPU); ``flip`` averages in the mirror image."""
    model.eval()
    rows = torch.as_tensor(rows)
    buffers = BatchBuffers()
    out = []
    for start in range(0, len(rows), batch_size):
        x = prepare_batch(images, rows[start:start + batch_size], device, mean, std, channels_last=channels_last,
                          buffers=buffers)
        with torch.autocast(device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            probs = model(x).float().softmax(1)
            if flip:
                probs = (probs + model(x.flip(3)).float().softmax(1)) / 2
        out.append(probs.cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)
