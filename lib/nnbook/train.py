"""One plain training loop: ``fit`` trains and returns a history; ``evaluate`` measures.

Progress shows as a tqdm bar in interactive use and one text line per epoch; during the site
build (``NNBOOK_SITE=1``) only the text lines, so the website shows readable logs rather than
empty widget boxes. Pressing Ctrl-C (or "interrupt kernel") stops
training cleanly: the model keeps its weights and ``fit`` returns the history so far.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .runtime import autocast, in_site_build, seed_offset

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class History(dict):
    """Per-epoch records as lists: ``history["val_acc"][-1]``; ``interrupted`` if Ctrl-C."""

    interrupted: bool = False

    def add(self, **values: float) -> None:
        for key, value in values.items():
            self.setdefault(key, []).append(value)

    def last(self, key: str) -> float:
        """The last recorded value of ``key``."""
        if not self.get(key):
            raise KeyError(f"history has no {key!r}; it has {sorted(self)}")
        return self[key][-1]


def _batches(loader: Iterable, desc: str):
    if in_site_build():
        return loader
    from tqdm.auto import tqdm

    return tqdm(loader, desc=desc, leave=False)


def _correct(logits: torch.Tensor, y: torch.Tensor) -> int:
    return int((logits.argmax(-1) == y).sum()) if logits.dim() == y.dim() + 1 else 0


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, loss_fn: LossFn = F.cross_entropy) -> dict:
    """Mean loss and accuracy of ``model`` over ``loader`` (accuracy for class logits only).

    Returns:
        ``{"loss": float, "acc": float}``; ``acc`` is 0 when outputs are not class logits.
    """
    dev = next(model.parameters()).device
    if hasattr(loader, "__len__") and len(loader) == 0:
        raise ValueError("evaluate needs a loader with at least one batch; got an empty one")
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in loader:
        x, y = x.to(dev), y.to(dev)
        with autocast(dev):
            out = model(x)
        out = out.float()
        total_loss += float(loss_fn(out, y)) * len(y)
        correct += _correct(out, y)
        count += len(y)
    model.train(was_training)
    return {"loss": total_loss / count, "acc": correct / count}


def fit(
    model: nn.Module,
    train_loader: Iterable,
    *,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    loss_fn: LossFn = F.cross_entropy,
    val_loader: Iterable | None = None,
    scheduler=None,
    step_scheduler_per_batch: bool = False,
    log_every: int = 1,
) -> History:
    """Train ``model`` for ``epochs`` passes over ``train_loader``; return the history.

    Args:
        model: already on its device; batches are moved to the device of its parameters.
        train_loader: yields ``(x, y)`` batches.
        epochs: number of passes.
        optimizer: any ``torch.optim`` optimizer over the model's parameters.
        loss_fn: ``loss_fn(outputs, y)``, cross-entropy by default.
        val_loader: if given, evaluated after every epoch.
        scheduler: a learning-rate scheduler, stepped once per epoch, or per batch when
            ``step_scheduler_per_batch`` (e.g. ``OneCycleLR``).
        log_every: print a line every ``log_every`` epochs and after the last; 0 prints nothing
            (and shows no progress bar).

    Returns:
        A :class:`History` with ``epoch``, ``train_loss``, ``train_acc``, ``seconds`` and,
        with a validation loader, ``val_loss`` and ``val_acc``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be a positive int; got {epochs!r}")
    dev = next(model.parameters()).device
    history = History()
    start = time.perf_counter()
    try:
        for epoch in range(1, epochs + 1):
            model.train()
            total_loss, correct, count = 0.0, 0, 0
            batches = _batches(train_loader, f"epoch {epoch}/{epochs}") if log_every else train_loader
            for x, y in batches:
                x, y = x.to(dev), y.to(dev)
                with autocast(dev):
                    out = model(x)
                loss = loss_fn(out.float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if scheduler is not None and step_scheduler_per_batch:
                    scheduler.step()
                total_loss += float(loss.detach()) * len(y)
                correct += _correct(out.detach(), y)
                count += len(y)
            if scheduler is not None and not step_scheduler_per_batch:
                scheduler.step()
            record = {"epoch": epoch, "train_loss": total_loss / count, "train_acc": correct / count}
            if val_loader is not None:
                val = evaluate(model, val_loader, loss_fn)
                record.update(val_loss=val["loss"], val_acc=val["acc"])
            record["seconds"] = time.perf_counter() - start
            history.add(**record)
            if log_every and (epoch % log_every == 0 or epoch == epochs):
                print("  ".join(_format(k, v) for k, v in record.items()), flush=True)
    except KeyboardInterrupt:
        history.interrupted = True
        print(f"interrupted after {len(history.get('epoch', []))} complete epoch(s); "
              "the model and the history so far are kept", flush=True)
    model.eval()
    return history


def _format(key: str, value: float) -> str:
    if key == "epoch":
        return f"epoch {value}"
    if key == "seconds":
        return f"{value:.1f}s"
    return f"{key} {value:.4f}"


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class TensorLoader:
    """Mini-batches from in-memory tensors: a fast, re-iterable stand-in for a DataLoader.

    Args:
        *tensors: tensors sharing their first dimension (e.g. images and labels).
        batch_size: examples per batch (the last batch may be smaller).
        shuffle: draw a new permutation each epoch.
        seed: seed of the permutation stream, so shuffled runs repeat exactly (``NNBOOK_SEED``
            is added to it, as to every seed of the book).
        device: move each batch there (default: leave tensors where they are).
    """

    def __init__(self, *tensors: torch.Tensor, batch_size: int, shuffle: bool = False,
                 seed: int = 0, device: torch.device | str | None = None):
        if not tensors or any(not isinstance(t, torch.Tensor) or t.dim() == 0 for t in tensors):
            got = [tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__ for t in tensors]
            raise ValueError(f"TensorLoader needs tensors of at least one dimension; got {got}")
        if any(len(t) != len(tensors[0]) for t in tensors):
            raise ValueError(f"tensors must share their first dimension; got "
                             f"{[tuple(t.shape) for t in tensors]}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int; got {batch_size!r}")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed + seed_offset())
        self.device = device

    def __len__(self) -> int:
        return -(-len(self.tensors[0]) // self.batch_size)

    def __iter__(self):
        n = len(self.tensors[0])
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        for start in range(0, n, self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = tuple(t[idx] for t in self.tensors)
            if self.device is not None:
                batch = tuple(t.to(self.device) for t in batch)
            yield batch
