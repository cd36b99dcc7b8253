"""nnbook.plot, nnbook.results, nnbook.widgets and nnbook.exercises."""

from __future__ import annotations

import json

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from nnbook import exercises, plot, results, widgets  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_curves_draws_one_line_per_key():
    history = {"epoch": [1, 2, 3], "train_loss": [1.0, 0.5, 0.3], "val_loss": [1.1, 0.7, 0.6]}
    result = plot.curves(history)
    ax = result if hasattr(result, "lines") else plt.gca()
    labels = [line.get_label() for line in ax.lines]
    assert len(ax.lines) == 2
    assert any("train" in lab for lab in labels) and any("val" in lab for lab in labels)
    assert list(ax.lines[0].get_ydata()) == [1.0, 0.5, 0.3]


def test_image_grid_lays_out_images():
    images = torch.rand(10, 28, 28)
    plot.image_grid(images, ncols=4, titles=[str(i) for i in range(10)])
    fig = plt.gcf()
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 10
    assert shown[3].get_title() == "3"


def test_heatmap_shows_the_matrix():
    m = torch.arange(6.0).reshape(2, 3)
    plot.heatmap(m, xlabels=["a", "b", "c"], ylabels=["x", "y"])
    ax = [ax for ax in plt.gcf().axes if ax.images][0]
    assert ax.images[0].get_array().shape == (2, 3)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_expect_records_prints_and_checks_only_in_full_mode(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("NNBOOK_RESULTS", str(tmp_path))
    monkeypatch.setenv("NNBOOK_MODE", "smoke")
    entry = results.expect("99_demo", "accuracy", 0.5, at_least=0.98, params=1234, train_seconds=12.345)
    out = capsys.readouterr().out
    assert "99_demo: accuracy = 0.5 (test split), target >= 0.98" in out and "not checked" in out
    saved = json.loads((tmp_path / "99_demo.json").read_text())
    assert saved == entry and saved["mode"] == "smoke" and saved["train_seconds"] == 12.3
    assert saved["met"] is False and saved["checked"] is False and saved["split"] == "test"
    monkeypatch.setenv("NNBOOK_MODE", "full")
    assert results.expect("98_other", "loss", 1.5, at_most=1.75)["met"] is True
    assert "(target met)" in capsys.readouterr().out
    with pytest.raises(results.TargetMissed, match=r"loss = 1.8 misses the stated target <= 1.75"):
        results.expect("98_other", "loss", 1.8, at_most=1.75)
    assert "TARGET MISSED" in capsys.readouterr().out
    assert json.loads((tmp_path / "98_other.json").read_text())["met"] is False  # recorded before raising
    assert sorted(results.collect(tmp_path)) == ["98_other", "99_demo"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(), "exactly one of at_least and at_most"),
    (dict(at_least=0.9, at_most=1.0), "exactly one of at_least and at_most"),
    (dict(at_least=0.9, value=float("nan")), "must be a finite number"),
])
def test_expect_rejects_unclear_targets(tmp_path, monkeypatch, kwargs, message):
    monkeypatch.setenv("NNBOOK_RESULTS", str(tmp_path))
    value = kwargs.pop("value", 0.95)
    with pytest.raises(ValueError, match=message):
        results.expect("97_bad", "accuracy", value, **kwargs)


def test_interactive_is_a_note_in_the_site_build_and_sliders_elsewhere(monkeypatch, capsys):
    calls = []

    def draw(w=0.0):
        calls.append(w)

    monkeypatch.setenv("NNBOOK_SITE", "1")
    assert widgets.interactive(draw, w=(-1.0, 1.0, 0.5)) is None
    assert "interactive widget appears here" in capsys.readouterr().out
    assert calls == []
    monkeypatch.setenv("NNBOOK_SITE", "0")
    w = widgets.interactive(draw, w=(-1.0, 1.0, 0.5))
    assert w is not None and calls == [0.0]  # ipywidgets draws once with the initial value


def test_exercise_check(capsys):
    def test(fn):
        assert fn(6) == 42, f"expected 42, got {fn(6)}"

    def stub(x):
        raise NotImplementedError

    assert exercises.check("Exercise 1", stub, test) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert exercises.check("Exercise 1", lambda x: 7 * x, test) is True
    assert "Exercise 1: correct" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="expected 42, got 41"):
        exercises.check("Exercise 1", lambda x: 41, test)
    with pytest.raises(TypeError, match="answer must be a function; got int"):
        exercises.check("Exercise 1", 42, test)  # a result passed where the function is expected
