"""nnbook.runtime: mode switch, config overrides, device choice, seeding, autocast."""

from __future__ import annotations

import contextlib
import dataclasses
import random

import numpy as np
import pytest
import torch

from nnbook import runtime


@dataclasses.dataclass
class Sizes:
    epochs: int = 10
    n_train: int = 60_000


def test_mode_defaults_to_full_and_reads_one_variable(monkeypatch):
    monkeypatch.delenv("NNBOOK_MODE", raising=False)
    assert runtime.mode() == "full" and not runtime.is_smoke()
    monkeypatch.setenv("NNBOOK_MODE", " Smoke ")
    assert runtime.mode() == "smoke" and runtime.is_smoke()
    monkeypatch.setenv("NNBOOK_MODE", "fast")
    with pytest.raises(ValueError, match="must be one of"):
        runtime.mode()


def test_for_mode_applies_smoke_overrides_only_in_smoke_mode(monkeypatch):
    monkeypatch.setenv("NNBOOK_MODE", "full")
    full = Sizes()
    assert runtime.for_mode(full, epochs=1) is full
    monkeypatch.setenv("NNBOOK_MODE", "smoke")
    smoke = runtime.for_mode(Sizes(), epochs=1)
    assert smoke == Sizes(epochs=1, n_train=60_000)
    with pytest.raises(ValueError, match=r"\['batch'\] are not fields of Sizes"):
        runtime.for_mode(Sizes(), batch=3)
    with pytest.raises(TypeError):
        runtime.for_mode({"epochs": 1}, epochs=2)


def test_site_build_flag(monkeypatch):
    monkeypatch.setenv("NNBOOK_SITE", "1")
    assert runtime.in_site_build()
    monkeypatch.setenv("NNBOOK_SITE", "0")
    assert not runtime.in_site_build()


def test_device_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.delenv("NNBOOK_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.device().type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.device().type == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.device().type == "cpu"


def test_device_override_wins_and_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("NNBOOK_DEVICE", "cpu")
    assert runtime.device() == torch.device("cpu")  # chosen over the CUDA device present
    monkeypatch.setenv("NNBOOK_DEVICE", "cuda:1")
    assert runtime.device() == torch.device("cuda", 1)
    monkeypatch.setenv("NNBOOK_DEVICE", "cuda:2")
    with pytest.raises(ValueError, match="no such device"):
        runtime.device()
    monkeypatch.setenv("NNBOOK_DEVICE", "gpu please")
    with pytest.raises(ValueError, match="must name a device"):
        runtime.device()
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    monkeypatch.setenv("NNBOOK_DEVICE", "mps")
    with pytest.raises(ValueError, match="no such device"):
        runtime.device()


def test_seed_offset_shifts_every_seed(monkeypatch):
    monkeypatch.delenv("NNBOOK_SEED", raising=False)
    runtime.seed_everything(3)
    at_3 = float(torch.rand(1))
    runtime.seed_everything(4)
    at_4 = float(torch.rand(1))
    monkeypatch.setenv("NNBOOK_SEED", "1")
    runtime.seed_everything(3)
    assert float(torch.rand(1)) == at_4 != at_3
    assert "seed offset=1" in runtime.describe()
    from nnbook.train import TensorLoader

    shifted = [b[0].tolist() for b in TensorLoader(torch.arange(10), batch_size=10, shuffle=True, seed=0)]
    monkeypatch.setenv("NNBOOK_SEED", "0")
    plain = [b[0].tolist() for b in TensorLoader(torch.arange(10), batch_size=10, shuffle=True, seed=1)]
    assert shifted == plain
    monkeypatch.setenv("NNBOOK_SEED", "one")
    with pytest.raises(ValueError, match="NNBOOK_SEED must be an integer"):
        runtime.seed_everything(0)


def test_seed_everything_repeats_every_generator():
    def draw():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    g = runtime.seed_everything(3)
    first = (*draw(), float(torch.rand(1, generator=g)))
    g = runtime.seed_everything(3)
    assert (*draw(), float(torch.rand(1, generator=g))) == first
    runtime.seed_everything(4)
    assert draw() != first[:3]


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_autocast_is_bf16_on_cuda_only():
    assert isinstance(runtime.autocast("cpu"), contextlib.nullcontext)
    assert isinstance(runtime.autocast(torch.device("mps")), contextlib.nullcontext)
    ctx = runtime.autocast("cuda")
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16


def test_describe_names_mode_and_device(monkeypatch):
    monkeypatch.setenv("NNBOOK_MODE", "smoke")
    line = runtime.describe()
    assert "mode=smoke" in line and f"device={runtime.device()}" in line
