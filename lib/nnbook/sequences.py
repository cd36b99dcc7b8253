"""Generated sequence data for the sequence chapters: Mackey-Glass and the adding problem.

* :func:`mackey_glass` integrates the Mackey-Glass delay differential equation
  (Mackey & Glass, 1977) with a fourth-order Runge-Kutta method that keeps the solution's
  history, the benchmark of echo state networks (Jaeger & Haas, 2004).
* :func:`adding_problem` draws the long-range memory task of Hochreiter & Schmidhuber (1997),
  in the two-channel form of Le, Jaitly & Hinton (2015).

Both are deterministic given their arguments (the adding problem through its ``seed``).
"""

from __future__ import annotations

import numpy as np
import torch


def _mg_rate(x: float, x_tau: float, *, beta: float, gamma: float, exponent: float) -> float:
    return beta * x_tau / (1.0 + x_tau**exponent) - gamma * x


def mackey_glass(
    n: int,
    *,
    tau: float = 17.0,
    beta: float = 0.2,
    gamma: float = 0.1,
    exponent: float = 10.0,
    dt: float = 0.1,
    sample_every: float = 1.0,
    x0: float = 1.2,
    discard: int = 500,
    seed: int | None = None,
) -> np.ndarray:
    """Sample the Mackey-Glass series ``dx/dt = beta x(t-tau) / (1 + x(t-tau)^exponent) - gamma x(t)``.

    The delay equation needs the whole past on ``[t - tau, t]``, so the integrator keeps it: a
    classical RK4 step of size ``dt`` (``tau / dt`` must be a whole number) reads ``x(t - tau)``
    from the stored grid and ``x(t - tau + dt/2)`` as the mean of its two grid neighbours
    (linear interpolation, which keeps the step's error well below the sampling resolution).
    The history for ``t <= 0`` is the constant ``x0`` (plus uniform noise of width 0.02 when a
    ``seed`` is given, to draw a different trajectory of the same attractor).

    Args:
        n: number of samples returned.
        tau: the delay; 17 gives the mildly chaotic series used as the ESN benchmark.
        beta, gamma, exponent: the equation's constants (Mackey & Glass's 0.2, 0.1, 10).
        dt: integration step.
        sample_every: time between returned samples (a multiple of ``dt``).
        x0: the constant initial history.
        discard: number of leading samples dropped (the transient from the flat history).
        seed: optional seed for a perturbed initial history; None keeps it flat.

    Shapes:
        Returns ``(n,)`` float64.

    Returns:
        ``x(t_k)`` at ``t_k = (discard + k) * sample_every``, ``k = 0..n-1``.

    Reference:
        M. C. Mackey and L. Glass, "Oscillation and chaos in physiological control systems",
        Science 197 (1977) 287-289.
    """
    if n < 1 or discard < 0:
        raise ValueError(f"need n >= 1 and discard >= 0; got n={n}, discard={discard}")
    lag = tau / dt
    stride = sample_every / dt
    if abs(lag - round(lag)) > 1e-9 or round(lag) < 1:
        raise ValueError(f"tau / dt must be a positive whole number; got {tau} / {dt} = {lag}")
    if abs(stride - round(stride)) > 1e-9 or round(stride) < 1:
        raise ValueError(f"sample_every / dt must be a positive whole number; got {stride}")
    lag, stride = int(round(lag)), int(round(stride))
    steps = (n + discard) * stride
    if lag < 2:
        raise ValueError(f"need tau / dt >= 2 for the delayed midpoint; got {lag}")
    h = lag + 1  # offset: x[i] = x(t) at t = (i - h) * dt; the history fills i <= h
    x = np.empty(h + steps + 1)
    x[: h + 1] = x0
    if seed is not None:
        x[: h + 1] += np.random.default_rng(seed).uniform(-0.01, 0.01, h + 1)
    k = dict(beta=beta, gamma=gamma, exponent=exponent)
    for i in range(h, h + steps):
        xt, dm, d0, d1, d2 = x[i], x[i - lag - 1], x[i - lag], x[i - lag + 1], x[i - lag + 2]
        dh = (9.0 * (d0 + d1) - (dm + d2)) / 16.0  # x(t - tau + dt/2), cubic interpolation
        k1 = _mg_rate(xt, d0, **k)
        k2 = _mg_rate(xt + 0.5 * dt * k1, dh, **k)
        k3 = _mg_rate(xt + 0.5 * dt * k2, dh, **k)
        k4 = _mg_rate(xt + dt * k3, d1, **k)
        x[i + 1] = xt + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    samples = x[h::stride]  # t = 0, sample_every, 2 sample_every, ...
    return samples[discard: discard + n].copy()


def adding_problem(n: int, length: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` sequences of the adding problem: add the two marked numbers of a long sequence.

    Channel 0 holds numbers drawn uniformly from [0, 1]; channel 1 is 0 except for two 1s,
    one at a uniformly drawn step in the first half and one in the second half. The target
    is the sum of the two marked numbers. Predicting the constant 1 (the target's mean) gives
    mean squared error 1/6 = Var(u1 + u2); a model must remember the first marked number for
    up to ``length`` steps to do better.

    Args:
        n: number of sequences.
        length: steps per sequence ``T`` (at least 2).
        seed: seed of the generator (same seed, same data).

    Shapes:
        Returns ``x`` of shape ``(n, length, 2)`` and ``y`` of shape ``(n,)``, both float32.

    Reference:
        S. Hochreiter and J. Schmidhuber, "Long short-term memory", Neural Computation 9 (1997);
        this two-channel form: Q. V. Le, N. Jaitly and G. E. Hinton, "A simple way to
        initialize recurrent networks of rectified linear units", arXiv:1504.00941 (2015).
    """
    if length < 2 or n < 1:
        raise ValueError(f"need n >= 1 and length >= 2; got n={n}, length={length}")
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=g)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, length, (n,), generator=g)
    marks = torch.zeros(n, length)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    x = torch.stack([values, marks], dim=-1)  # (n, T, 2)
    y = values[rows, first] + values[rows, second]  # (n,)
    return x, y
