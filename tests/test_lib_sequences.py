"""Unit tests for nnbook.sequences: Mackey-Glass integration and the adding problem."""

import numpy as np
import pytest
import torch

from nnbook.sequences import adding_problem, mackey_glass


def test_mackey_glass_converges_as_the_step_shrinks():
    coarse = mackey_glass(300, dt=0.1, discard=0)
    fine = mackey_glass(300, dt=0.0125, discard=0)
    assert np.abs(coarse - fine).max() < 1e-3, "RK4 at dt=0.1 should agree with dt=0.0125"


def test_mackey_glass_satisfies_the_delay_equation():
    dt = 0.01
    x = mackey_glass(4000, dt=dt, sample_every=dt, discard=3000)  # t from 30 to 70, fine grid
    lag = round(17 / dt)
    xt, xtau = x[lag + 1:-1], x[1:-lag - 1]
    dxdt = (x[lag + 2:] - x[lag:-2]) / (2 * dt)  # central difference
    rate = 0.2 * xtau / (1 + xtau**10) - 0.1 * xt
    assert np.abs(dxdt - rate).max() < 1e-4


def test_mackey_glass_attractor_range_and_determinism():
    x = mackey_glass(2000)
    assert x.shape == (2000,) and x.dtype == np.float64
    assert 0.3 < x.min() < 0.5 and 1.2 < x.max() < 1.4, "tau=17 attractor lies in about [0.4, 1.35]"
    np.testing.assert_array_equal(x, mackey_glass(2000))
    assert not np.allclose(mackey_glass(2000, seed=1), x)


def test_mackey_glass_rejects_misaligned_delay():
    with pytest.raises(ValueError, match="whole number"):
        mackey_glass(10, tau=17.05, dt=0.1)


def test_adding_problem_shapes_marks_and_targets():
    x, y = adding_problem(64, 100, seed=3)
    assert x.shape == (64, 100, 2) and y.shape == (64,)
    assert x.dtype == torch.float32 and y.dtype == torch.float32
    marks = x[..., 1]
    assert torch.all(marks.sum(1) == 2)
    assert torch.all(marks[:, :50].sum(1) == 1) and torch.all(marks[:, 50:].sum(1) == 1)
    torch.testing.assert_close((x[..., 0] * marks).sum(1), y)
    x2, y2 = adding_problem(64, 100, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)


def test_adding_problem_trivial_baseline_is_one_sixth():
    _, y = adding_problem(200_000, 4, seed=0)
    assert abs(float(((y - 1.0) ** 2).mean()) - 1 / 6) < 3e-3
