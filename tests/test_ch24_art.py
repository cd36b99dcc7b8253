"""Chapter 24: the notebook's Fuzzy ART against artlib's FuzzyART 0.1.12 (same rho, alpha,
beta and input order: same categories, weights to 1e-6, same labels and predictions), its
tie-breaking and scaling conventions, the template property, bad inputs and the exercise."""

import itertools

import numpy as np
import pytest
import torch
from artlib import FuzzyART as ArtlibFuzzyART
from chapters import load_chapter
from sklearn.datasets import load_digits, load_iris
from sklearn.decomposition import PCA

from nnbook.exercises import check

ch = load_chapter("24")
DT = torch.float64


def _datasets() -> dict:
    """Three raw data sets (N, D), float64: iris, digits in 6 PCA dims, uniform with repeats."""
    iris = load_iris().data[np.random.default_rng(0).permutation(150)]
    digits = load_digits().data[:250]
    digits = PCA(6, random_state=0).fit_transform(digits)
    rand = np.random.default_rng(1).random((150, 3))
    rand = np.concatenate([rand, rand[:30]])          # exact repeats: ties in the choice
    return {"iris": iris, "digits": digits, "uniform": rand}


DATA = _datasets()


def _prepared(X: np.ndarray) -> torch.Tensor:
    """The chapter's scaling (training min and max) and complement coding, float64."""
    x = torch.from_numpy(X).to(DT)
    return ch.complement_code(ch.min_max_scale(x, x.min(0).values, x.max(0).values))


def test_scaling_and_complement_coding_equal_artlibs_prepare_data():
    """Catches a scaling by the wrong range, (1 - a, a) order, or a constant column that is
    not mapped to 0 as artlib does."""
    X = np.concatenate([DATA["iris"], np.full((150, 1), 3.0)], axis=1)  # a constant column
    theirs = ArtlibFuzzyART(rho=0.5, alpha=1e-3, beta=1.0).prepare_data(X)
    torch.testing.assert_close(_prepared(X), torch.from_numpy(theirs), rtol=0, atol=1e-12)


def test_min_max_scale_clips_values_outside_the_training_range():
    """Catches test data scaled beyond [0, 1] (complement coding would then reject it)."""
    lo, hi = torch.tensor([0.0, 1.0]), torch.tensor([2.0, 3.0])
    got = ch.min_max_scale(torch.tensor([[-1.0, 2.0], [3.0, 5.0]]), lo, hi)
    torch.testing.assert_close(got, torch.tensor([[0.0, 0.5], [1.0, 1.0]]))


CASES = list(itertools.product(DATA, [0.0, 0.5, 0.75, 0.9], [1e-3, 0.5], [1.0, 0.4]))


@pytest.mark.parametrize("name,rho,alpha,beta", CASES)
def test_fuzzy_art_equals_artlib(name, rho, alpha, beta):
    """Same data, order and parameters: the same number of categories, weights to 1e-6, the
    same category for every input during learning and the same predictions afterwards.
    Catches a wrong choice or match function, a search that does not walk the categories in
    order of decreasing T (or breaks ties towards the newer category), a vigilance test with
    '>' instead of '>=', a wrong learning rule (24.5), or a new category not set to I."""
    X = DATA[name]
    theirs = ArtlibFuzzyART(rho=rho, alpha=alpha, beta=beta)
    I_theirs = theirs.prepare_data(X)
    theirs.fit(I_theirs, match_tracking="MT+")   # no match_reset_func: plain Fuzzy ART
    ours = ch.FuzzyART(rho=rho, alpha=alpha, beta=beta)
    labels = ours.partial_fit(_prepared(X))
    W_theirs = torch.from_numpy(np.array(theirs.W))
    assert ours.n_categories == len(W_theirs)
    torch.testing.assert_close(ours.W, W_theirs, rtol=0, atol=1e-6)
    assert labels.tolist() == theirs.labels_.tolist()
    probe = np.random.default_rng(2).random((100, X.shape[1]))
    I_probe = np.concatenate([I_theirs, np.hstack([probe, 1 - probe])])
    assert ours.predict(torch.from_numpy(I_probe)).tolist() == \
        theirs.predict(I_probe).tolist()


@pytest.mark.parametrize("rho", [0.6, 0.85])
def test_two_phases_equal_artlibs_partial_fit(rho):
    """Class-incremental learning as in the chapter (digits 0-4, then 5-9, partial_fit twice):
    catches state lost or reset between phases."""
    x, y = load_digits(return_X_y=True)
    x, y = x[:300], y[:300]
    X = PCA(8, random_state=0).fit_transform(x)
    theirs = ArtlibFuzzyART(rho=rho, alpha=1e-3, beta=1.0)
    I_all = theirs.prepare_data(X)
    ours = ch.FuzzyART(rho=rho, alpha=1e-3, beta=1.0)
    got = []
    for phase in (y < 5, y >= 5):
        theirs.partial_fit(I_all[phase])
        got += ours.partial_fit(torch.from_numpy(I_all[phase])).tolist()
    assert got == theirs.labels_.tolist()
    torch.testing.assert_close(ours.W, torch.from_numpy(np.array(theirs.W)), rtol=0,
                               atol=1e-6)


def test_ties_in_the_choice_go_to_the_older_category_as_in_artlib():
    """Two identical categories: both libraries pick index 0. Catches an unstable sort or
    an argmax over reversed order."""
    w = np.array([0.2, 0.3, 0.6, 0.5])
    x = np.array([0.3, 0.35, 0.7, 0.65])
    theirs = ArtlibFuzzyART(rho=0.5, alpha=1e-3, beta=1.0)
    theirs.fit(x[None])
    theirs.W = [w.copy(), w.copy()]
    ours = ch.FuzzyART(rho=0.5, alpha=1e-3, beta=1.0)
    ours.W = torch.from_numpy(np.stack([w, w]))
    assert ours.learn_one(torch.from_numpy(x)) == theirs.step_fit(x) == 0
    torch.testing.assert_close(ours.W, torch.from_numpy(np.array(theirs.W)))


def test_the_search_passes_over_a_reset_winner():
    """The first choice fails vigilance, the second passes (the chapter's point d): catches a
    learner that only ever tests the winner and founds a category when it fails."""
    I_hand = ch.complement_code(torch.tensor([[0.1, 0.1], [0.5, 0.5], [0.9, 0.9]], dtype=DT))
    art = ch.FuzzyART(rho=0.55, alpha=1e-3, beta=1.0)
    art.partial_fit(I_hand)
    d = ch.complement_code(torch.tensor([[0.6, 0.6]], dtype=DT))
    assert ch.choice(d, art.W, art.alpha).argmax().item() == 0
    assert art.learn_one(d[0]) == 1 and art.n_categories == 2


@pytest.mark.parametrize("rho,alpha", [(0.3, 1e-3), (0.7, 0.1), (0.9, 1.0)])
def test_template_property_with_fast_learning(rho, alpha):
    """Weights never increase, every weight is a box with |w| = M - |R| (24.2), and every
    input stays inside its coding category's box and passes its vigilance test. Catches an
    update that moves weights up (e.g. max instead of min) or a coded_still that misreads
    the box."""
    a = torch.rand(300, 4, generator=torch.Generator().manual_seed(3), dtype=DT)
    I_a = ch.complement_code(a)
    art = ch.FuzzyART(rho=rho, alpha=alpha, beta=1.0)
    J = []
    for row in I_a:
        before = None if art.W is None else art.W.clone()
        J.append(art.learn_one(row))
        if before is not None:
            assert (art.W[: len(before)] <= before).all()
    assert ch.coded_still(art, I_a, torch.tensor(J)).all()
    u, v = art.W[:, :4], 1 - art.W[:, 4:]
    torch.testing.assert_close(art.W.sum(1), 4 - (v - u).sum(1))


def test_coded_still_detects_inputs_outside_their_box():
    """Slow learning leaves inputs outside the box that coded them: catches a coded_still
    that cannot fail (the chapter's headline measure)."""
    a = torch.rand(300, 3, generator=torch.Generator().manual_seed(4), dtype=DT)
    I_a = ch.complement_code(a)
    art = ch.FuzzyART(rho=0.7, alpha=0.01, beta=0.5)
    J = art.partial_fit(I_a)
    assert ch.coded_still(art, I_a, J).float().mean() < 0.9


def test_category_labels_take_the_majority_and_mark_empty_categories():
    """Catches labels taken from the first or last coded input, or an empty category that
    silently gets label 0."""
    J = torch.tensor([0, 0, 0, 2, 2])
    y = torch.tensor([3, 7, 7, 1, 1])
    assert ch.category_labels(J, y, 3).tolist() == [7, -1, 1]


def test_bad_inputs_are_rejected_with_the_expected_shape():
    """Catches silent broadcasting of wrong shapes and inputs that break |I| = M."""
    with pytest.raises(ValueError, match=r"a must be \(N, M\); got \(5,\)"):
        ch.complement_code(torch.rand(5))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        ch.complement_code(torch.tensor([[1.5, 0.2]]))
    for kwargs, word in [({"rho": 1.5}, "rho"), ({"rho": 0.5, "alpha": 0.0}, "alpha"),
                         ({"rho": 0.5, "beta": 0.0}, "beta")]:
        with pytest.raises(ValueError, match=f"{word} must be"):
            ch.FuzzyART(**kwargs)
    art = ch.FuzzyART(rho=0.5)
    with pytest.raises(ValueError, match="no categories yet"):
        art.predict(torch.rand(2, 4))
    with pytest.raises(ValueError, match="complement coded"):
        art.partial_fit(torch.rand(3, 4))
    art.partial_fit(ch.complement_code(torch.rand(3, 3)))
    with pytest.raises(ValueError, match=r"I must be \(N, 6\); got \(2, 4\)"):
        art.partial_fit(ch.complement_code(torch.rand(2, 2)))
    with pytest.raises(ValueError, match=r"I must be \(N, 2M\) and W \(C, 2M\)"):
        ch.choice(torch.rand(2, 4), torch.rand(3, 6), 0.1)
    with pytest.raises(ValueError, match=r"I must be \(N, 2M\) and J \(N,\)"):
        ch.coded_still(art, torch.rand(4, 6), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"X must be \(N, D\)"):
        ch.min_max_scale(torch.rand(4, 3), torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match=r"J and y must both be \(N,\)"):
        ch.category_labels(torch.tensor([0, 1]), torch.tensor([1]), 2)


# ------------------------------------------------------------------------------ exercise

def solved_category_boxes(W):
    M = W.shape[1] // 2
    lower, upper = W[:, :M], 1 - W[:, M:]
    return lower, upper


def test_exercise_category_boxes():
    """The stub is 'not attempted yet'; the reference solution passes the notebook's check;
    a solution that forgets the complement (v = second half of w) fails it."""
    assert check("stub", ch.category_boxes, ch.test_category_boxes) is None
    assert check("solved", solved_category_boxes, ch.test_category_boxes) is True

    def wrong(W):
        M = W.shape[1] // 2
        return W[:, :M], W[:, M:]

    with pytest.raises(AssertionError):
        check("wrong", wrong, ch.test_category_boxes)
