"""nnbook.train: fit/evaluate on a small problem, Ctrl-C handling, logging, TensorLoader."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nnbook
from nnbook.train import History, TensorLoader, count_parameters, evaluate, fit


def blobs(n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 2, generator=g) * 0.5 + (2.0 * y - 1.0)[:, None]  # two separated blobs
    return x, y


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))


def test_fit_learns_and_returns_a_history(capsys):
    x, y = blobs()
    model = make_model()
    train = TensorLoader(x[:300], y[:300], batch_size=32, shuffle=True)
    val = TensorLoader(x[300:], y[300:], batch_size=100)
    before = evaluate(model, val)
    history = fit(model, train, epochs=5, optimizer=torch.optim.Adam(model.parameters(), 1e-2),
                  val_loader=val)
    assert isinstance(history, History) and not history.interrupted
    assert history["epoch"] == [1, 2, 3, 4, 5]
    assert set(history) == {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "seconds"}
    assert history.last("val_acc") > 0.95
    assert history.last("val_loss") < before["loss"]
    assert history["train_loss"][-1] < history["train_loss"][0]
    assert capsys.readouterr().out.count("epoch ") == 5
    assert not model.training  # fit leaves the model in eval mode
    with pytest.raises(KeyError, match="history has no 'nope'"):
        history.last("nope")


def test_fit_is_reproducible():
    x, y = blobs()
    runs = []
    for _ in range(2):
        model = make_model()
        loader = TensorLoader(x, y, batch_size=50, shuffle=True, seed=1)
        runs.append(fit(model, loader, epochs=2, optimizer=torch.optim.SGD(model.parameters(), 0.1),
                        log_every=0)["train_loss"])
    assert runs[0] == runs[1]


def test_log_every(capsys):
    x, y = blobs(100)
    model = make_model()
    loader = TensorLoader(x, y, batch_size=50)
    fit(model, loader, epochs=5, optimizer=torch.optim.SGD(model.parameters(), 0.1), log_every=2)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert [line.split()[1] for line in lines] == ["2", "4", "5"]  # every 2nd, and the last
    fit(model, loader, epochs=2, optimizer=torch.optim.SGD(model.parameters(), 0.1), log_every=0)
    assert capsys.readouterr().out == ""


def test_ctrl_c_keeps_the_model_and_the_history_so_far(capsys):
    x, y = blobs(200)
    model = make_model()
    calls = {"n": 0}

    def loss_fn(out, target):
        calls["n"] += 1
        if calls["n"] == 9:  # during the third epoch (4 batches per epoch)
            raise KeyboardInterrupt
        return F.cross_entropy(out, target)

    weights_before = model[0].weight.detach().clone()
    history = fit(model, TensorLoader(x, y, batch_size=50), epochs=10,
                  optimizer=torch.optim.SGD(model.parameters(), 0.1), loss_fn=loss_fn)
    assert history.interrupted
    assert history["epoch"] == [1, 2]
    assert not torch.equal(model[0].weight, weights_before)  # the training done so far is kept
    assert "interrupted after 2 complete epoch(s)" in capsys.readouterr().out


def test_progress_bar_only_outside_the_site_build(monkeypatch, capsys):
    from nnbook import train

    monkeypatch.setenv("NNBOOK_SITE", "1")
    assert isinstance(train._batches([1, 2], "x"), list)
    monkeypatch.setenv("NNBOOK_SITE", "0")
    bar = train._batches([1, 2], "x")
    assert type(bar).__module__.startswith("tqdm") and list(bar) == [1, 2]


def test_evaluate_on_regression_outputs_reports_loss_only():
    model = nn.Linear(3, 1)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    result = evaluate(model, TensorLoader(x, y, batch_size=7), F.mse_loss)
    expected = float(F.mse_loss(model(x), y).detach())
    assert result["acc"] == 0 and result["loss"] == pytest.approx(expected, rel=1e-5)


def test_tensor_loader_batches_and_shuffles():
    x, y = torch.arange(10).float(), torch.arange(10)
    loader = TensorLoader(x, y, batch_size=4)
    batches = list(loader)
    assert len(loader) == 3 and [len(b[1]) for b in batches] == [4, 4, 2]
    assert torch.cat([b[1] for b in batches]).tolist() == list(range(10))
    shuffled = TensorLoader(x, y, batch_size=10, shuffle=True, seed=5)
    first, second = next(iter(shuffled))[1], next(iter(shuffled))[1]
    assert sorted(first.tolist()) == list(range(10)) and not torch.equal(first, second)
    again = next(iter(TensorLoader(x, y, batch_size=10, shuffle=True, seed=5)))[1]
    assert torch.equal(first, again)
    xb, yb = next(iter(shuffled))
    assert torch.equal(xb.long(), yb)  # rows stay paired
    with pytest.raises(ValueError, match="share their first dimension"):
        TensorLoader(x, y[:5], batch_size=2)


def test_count_parameters():
    model = nn.Linear(3, 2)
    assert count_parameters(model) == 8 == nnbook.count_parameters(model)
    model.bias.requires_grad_(False)
    assert count_parameters(model) == 6


def test_bad_arguments_are_named():
    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        TensorLoader(x, y, batch_size=0)
    with pytest.raises(ValueError, match=r"share their first dimension; got \[\(8, 2\), \(7,\)\]"):
        TensorLoader(x, y[:7], batch_size=4)
    with pytest.raises(ValueError, match="at least one dimension"):
        TensorLoader(torch.tensor(3.0), batch_size=1)
    model = nn.Linear(2, 2)
    sgd = torch.optim.SGD(model.parameters(), 0.1)
    with pytest.raises(ValueError, match="epochs must be a positive int; got 0"):
        fit(model, TensorLoader(x, y, batch_size=4), epochs=0, optimizer=sgd)
    with pytest.raises(ValueError, match="at least one batch"):
        evaluate(model, [])
