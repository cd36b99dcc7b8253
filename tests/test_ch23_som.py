"""Chapter 23: the notebook's online and batch SOM, errors and U-matrix against MiniSom 2.3.6
(same initial weights and sample order: equal weights), its own initial weights and orders,
the map as a classifier, and its exercise."""

import copy
import itertools

import numpy as np
import pytest
import torch
from chapters import load_chapter
from minisom import MiniSom, _build_iteration_indexes
from sklearn.datasets import load_digits

from nnbook.exercises import check

ch = load_chapter("23")
DT = torch.float64


@pytest.fixture(scope="module")
def digits():
    """The 1,797 scikit-learn digits scaled to [0, 1], float64 (N, 64), and their labels."""
    x, y = load_digits(return_X_y=True)
    return torch.from_numpy(x / 16.0), torch.from_numpy(y)


def _minisom_with(W: torch.Tensor, rows: int, cols: int, **kwargs) -> MiniSom:
    """A MiniSom holding the prototypes W (K, D) (set through its weights array)."""
    som = MiniSom(rows, cols, W.shape[1], random_seed=0, **kwargs)
    som._weights = W.numpy().reshape(rows, cols, -1).copy()
    return som


# ------------------------------------------------------------------ grid, neighbourhood, schedule

def test_units_are_numbered_row_by_row_like_minisom_weights():
    """Catches (j, i) coordinates or column-major numbering: MiniSom's (R, C, D) weights array,
    flattened, puts unit (i, j) at k = i * C + j."""
    coords = ch.grid_coordinates(3, 5)
    expected = np.stack(np.unravel_index(np.arange(15), (3, 5)), axis=1)
    torch.testing.assert_close(coords, torch.from_numpy(expected).float())
    G = ch.grid_sq_distances(coords)
    assert G.shape == (15, 15) and float(G[0, 14]) == 2**2 + 4**2 and float(G[7, 7]) == 0
    with pytest.raises(ValueError, match=r"rows >= 1 and cols >= 1; got \(0, 3\)"):
        ch.grid_coordinates(0, 3)


@pytest.mark.parametrize("rows, cols, c, sigma", [
    (4, 6, (0, 0), 0.5), (4, 6, (3, 5), 1.0), (6, 4, (2, 1), 2.5), (1, 7, (0, 3), 1.3),
])
def test_gaussian_neighbourhood_equals_minisom(rows, cols, c, sigma):
    """Catches sigma instead of 2 sigma^2, data-space instead of grid distance, or swapped axes."""
    som = MiniSom(rows, cols, 2, sigma=1.0, random_seed=0)
    coords = ch.grid_coordinates(rows, cols).double()
    ours = ch.gaussian_neighbourhood(coords, c[0] * cols + c[1], sigma).view(rows, cols)
    torch.testing.assert_close(ours, torch.from_numpy(som.neighborhood(c, sigma)))


def test_asymptotic_decay_is_minisoms_default_for_both_rate_and_radius():
    """Pins the schedule (23.5) to MiniSom's: a different default in another MiniSom version, or
    1 + t/T instead of 1 + 2t/T here, fails."""
    som = MiniSom(2, 2, 1, random_seed=0)
    assert som._learning_rate_decay_function.__name__ == "_asymptotic_decay"
    assert som._sigma_decay_function.__name__ == "_asymptotic_decay"
    T, t = 1000, np.arange(0, 1000, 37)
    torch.testing.assert_close(ch.asymptotic_decay(0.5, torch.from_numpy(t).double(), T),
                               torch.from_numpy(som._asymptotic_decay(0.5, t, T)))
    assert ch.asymptotic_decay(3.0, T, T) == pytest.approx(1.0)


@pytest.mark.parametrize("random_order", [True, False])
def test_minisom_order_replays_minisoms_generator(random_order):
    """MiniSom draws the initial weights, then shuffles with the same RandomState: replaying
    the shuffle without the weights' draws first, or shuffling per epoch, fails."""
    som = MiniSom(4, 3, 5, random_seed=11)
    rng = copy.deepcopy(som._random_generator) if random_order else None
    expected = _build_iteration_indexes(37, 200, random_generator=rng)
    got = ch.minisom_order(37, 200, seed=11, shape=(4, 3, 5), random_order=random_order)
    torch.testing.assert_close(got, torch.from_numpy(np.asarray(expected)))


def test_shuffled_cycle_uses_each_sample_floor_or_ceil_times():
    """Catches sampling with replacement (uneven counts) or an unshuffled cyclic order."""
    g = torch.Generator().manual_seed(0)
    order = ch.shuffled_cycle(7, 30, g)
    counts = torch.bincount(order, minlength=7)
    assert order.shape == (30,) and set(counts.tolist()) == {4, 5} and int(counts.sum()) == 30
    assert not torch.equal(order, torch.arange(30) % 7), "the order should be shuffled"
    again = ch.shuffled_cycle(7, 30, torch.Generator().manual_seed(0))
    torch.testing.assert_close(order, again)


def test_minisom_init_draws_unit_vectors_from_the_cube():
    """Catches unnormalized rows or draws from [0, 1] instead of [-1, 1]."""
    W = ch.minisom_init(6, 5, 4, torch.Generator().manual_seed(0))
    assert W.shape == (30, 4)
    torch.testing.assert_close(W.norm(dim=1), torch.ones(30))
    assert float(W.min()) < -0.3 and float(W.max()) > 0.3, "directions should cover [-1, 1]^D"


# ------------------------------------------------------------------ the online step and training

def test_som_step_limits_winner_take_all_and_everyone_moves():
    """sigma -> 0 is competitive learning (23.2): only the winner moves; a huge sigma moves every
    unit by eta (x - w_k). A neighbourhood centred on the wrong unit fails both."""
    W = torch.tensor([[0.0, 0.0], [4.0, 0.0], [0.0, 4.0], [4.0, 4.0]], dtype=DT)
    G = ch.grid_sq_distances(ch.grid_coordinates(2, 2)).double()
    x = torch.tensor([3.0, 3.5], dtype=DT)
    eta = torch.tensor(0.25, dtype=DT)
    tiny = ch.som_step(W, x, G, eta, torch.tensor(1e-3, dtype=DT))
    expected = W.clone()
    expected[3] += 0.25 * (x - W[3])
    torch.testing.assert_close(tiny, expected)
    huge = ch.som_step(W, x, G, eta, torch.tensor(1e6, dtype=DT))
    torch.testing.assert_close(huge, W + 0.25 * (x - W))


CASES = [  # rows, cols, sigma0, eta0, steps, random_order, seed
    (5, 7, 1.5, 0.5, 1500, True, 0),
    (7, 5, 3.0, 0.3, 1234, True, 1),
    (4, 4, 1.0, 0.8, 700, False, 2),
    (1, 10, 2.0, 0.5, 900, True, 3),
]


@pytest.mark.parametrize("rows, cols, sigma0, eta0, steps, random_order, seed", CASES)
def test_online_training_equals_minisom_from_the_same_start(digits, rows, cols, sigma0, eta0,
                                                            steps, random_order, seed):
    """The whole training, float64: a different schedule, winner, neighbourhood, update or sample
    order anywhere would leave the maps far apart, not 1e-10."""
    x = digits[0][:300]
    som = MiniSom(rows, cols, 64, sigma=sigma0, learning_rate=eta0, random_seed=seed)
    W0 = ch.minisom_weights(som)
    som.train(x.numpy(), steps, random_order=random_order)
    order = ch.minisom_order(300, steps, seed=seed, shape=(rows, cols, 64),
                             random_order=random_order)
    W, history = ch.train_som(W0, x, order, rows=rows, cols=cols, sigma0=sigma0, eta0=eta0)
    W_ref = ch.minisom_weights(som)
    assert float((W_ref - W0).abs().max()) > 0.5, "training should move the prototypes"
    torch.testing.assert_close(W, W_ref, rtol=0, atol=1e-10)
    assert history["t"] == [], "no monitor: no history"


def test_float32_training_stays_within_1e_5_of_minisom(digits):
    """The chapter trains in float32: a schedule computed in a lower precision, or a winner
    flipped by rounding, would leave more than 1e-5 between the maps."""
    x = digits[0][:400]
    som = MiniSom(6, 6, 64, sigma=2.0, learning_rate=0.5, random_seed=5)
    W0 = ch.minisom_weights(som)
    som.train(x.numpy(), 2000, random_order=True)
    order = ch.minisom_order(400, 2000, seed=5, shape=(6, 6, 64))
    W, _ = ch.train_som(W0.float(), x.float(), order, rows=6, cols=6, sigma0=2.0, eta0=0.5)
    assert float((W.double() - ch.minisom_weights(som)).abs().max()) < 1e-5


def test_history_logs_the_requested_steps_and_the_final_map():
    """Catches logging after the wrong step (an off-by-one) or a stale final map."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(50, 3, generator=g)
    W0 = ch.minisom_init(3, 4, 3, g)
    order = ch.shuffled_cycle(50, 20, g)
    W, h = ch.train_som(W0, X, order, rows=3, cols=4, sigma0=1.5, eta0=0.5, monitor=X,
                        log_steps=[0, 7, 20], keep_weights=True)
    assert h["t"] == [0, 7, 20] and len(h["W"]) == 3
    torch.testing.assert_close(h["W"][0], W0)
    torch.testing.assert_close(h["W"][-1], W)
    W7, _ = ch.train_som(W0, X, order[:7], rows=3, cols=4, sigma0=1.5, eta0=0.5)
    assert not torch.allclose(h["W"][1], W7), "the schedule runs over all T steps, not 7"
    assert h["qe"][0] == pytest.approx(ch.quantization_error(X, W0))
    assert h["te"][-1] == pytest.approx(ch.topographic_error(X, W, 3, 4))


def test_our_seeds_and_minisoms_seeds_give_the_same_errors(digits):
    """Same algorithm, independent random numbers: mean test QE within 5%, mean TE within 0.03
    over three seeds each (the chapter's targets), on a smaller problem."""
    x, _ = digits
    train, test = x[:600], x[1000:1400]
    steps, rows, cols, sigma0 = 3000, 8, 8, 2.0
    ours, theirs = [], []
    for seed in range(3):
        g = torch.Generator().manual_seed(100 + seed)
        W, _ = ch.train_map(rows, cols, sigma0, train.float(), n_iter=steps, eta0=0.5,
                            generator=g)
        ours.append((ch.quantization_error(test.float(), W),
                     ch.topographic_error(test.float(), W, rows, cols)))
        som = MiniSom(rows, cols, 64, sigma=sigma0, learning_rate=0.5, random_seed=seed)
        som.train(train.numpy(), steps, random_order=True)
        theirs.append((som.quantization_error(test.numpy()), som.topographic_error(test.numpy())))
    (qe_ours, te_ours), (qe_ref, te_ref) = np.mean(ours, 0), np.mean(theirs, 0)
    assert abs(qe_ours - qe_ref) / qe_ref <= 0.05, (qe_ours, qe_ref)
    assert abs(te_ours - te_ref) <= 0.03, (te_ours, te_ref)


# ------------------------------------------------------------------ errors and U-matrix

def test_errors_and_u_matrix_equal_minisom_on_a_trained_map(digits):
    """Catches a squared QE, a 4-neighbour TE, or a U-matrix over the wrong neighbours or with
    the wrong scaling, on a rectangular map (so rows and columns cannot swap unseen)."""
    x = digits[0]
    som = MiniSom(6, 9, 64, sigma=2.0, learning_rate=0.5, random_seed=4)
    som.train(x[:500].numpy(), 1500, random_order=True)
    W, held_out = ch.minisom_weights(som), x[500:900]
    assert ch.quantization_error(held_out, W) == pytest.approx(
        som.quantization_error(held_out.numpy()), abs=1e-12)
    assert ch.topographic_error(held_out, W, 6, 9) == som.topographic_error(held_out.numpy())
    for scaling in ("mean", "sum"):
        torch.testing.assert_close(ch.u_matrix(W, 6, 9, scaling),
                                   torch.from_numpy(som.distance_map(scaling=scaling)))


def test_quantization_error_is_a_mean_distance_not_a_squared_one():
    """Distances 1 and 3: their mean is 2; squared distances would give 5."""
    W = torch.tensor([[0.0, 0.0], [3.0, 4.0]], dtype=DT)
    X = torch.tensor([[0.0, 1.0], [3.0, 0.0]], dtype=DT)  # both nearest to (0, 0): 1 and 3
    assert ch.quantization_error(X, W) == pytest.approx(2.0)


def test_topographic_error_counts_diagonal_neighbours_as_adjacent_like_minisom():
    """A 2 x 2 map whose best two units are diagonal: no error (MiniSom's 8-neighbours); a 1 x 4
    map whose best two units are two apart: an error. A 4-neighbour or a 'same unit' test fails."""
    W = torch.tensor([[0.0], [10.0], [11.0], [1.0]], dtype=DT)
    X = torch.tensor([[0.4], [10.4]], dtype=DT)
    assert ch.topographic_error(X, W, 2, 2) == 0.0
    assert _minisom_with(W, 2, 2).topographic_error(X.numpy()) == 0.0
    W_line = torch.tensor([[0.0], [5.0], [1.0], [9.0]], dtype=DT)
    X_line = torch.tensor([[0.4], [3.2]], dtype=DT)  # units 0 and 2 (an error), 1 and 2 (fine)
    assert ch.topographic_error(X_line, W_line, 1, 4) == 0.5
    assert _minisom_with(W_line, 1, 4).topographic_error(X_line.numpy()) == 0.5


@pytest.mark.parametrize("rows, cols", [(3, 4), (1, 5), (2, 2)])
def test_chance_topographic_error_by_enumerating_all_pairs(rows, cols):
    """Catches a neighbour count that forgets the diagonals or counts unordered pairs once."""
    coords = ch.grid_coordinates(rows, cols)
    pairs = list(itertools.permutations(range(rows * cols), 2))
    far = sum(float((coords[k] - coords[j]).abs().max()) > 1 for k, j in pairs)
    assert ch.chance_topographic_error(rows, cols) == pytest.approx(far / len(pairs))


def test_u_matrix_by_hand_sum_and_mean():
    """1 x 3 map with prototypes 0, 1, 3: sums (1, 3, 2), means (1, 1.5, 2). Mixing up the two
    scalings, or dividing by the wrong neighbour count at the ends, fails."""
    W = torch.tensor([[0.0], [1.0], [3.0]], dtype=DT)
    torch.testing.assert_close(ch.u_matrix(W, 1, 3, "sum"),
                               torch.tensor([[1 / 3, 1.0, 2 / 3]], dtype=DT))
    torch.testing.assert_close(ch.u_matrix(W, 1, 3), torch.tensor([[0.5, 0.75, 1.0]], dtype=DT))


# ------------------------------------------------------------------ batch SOM

@pytest.mark.parametrize("rows, cols, sigma0, eta0, passes", [
    (5, 7, 2.0, 0.5, 6), (6, 3, 1.0, 1.0, 4),
])
def test_batch_som_equals_minisom_train_batch_offline(digits, rows, cols, sigma0, eta0,
                                                      passes):
    x = digits[0][:150]
    som = MiniSom(rows, cols, 64, sigma=sigma0, learning_rate=eta0, random_seed=9)
    W0 = ch.minisom_weights(som)
    som.train_batch_offline(x.numpy(), passes)
    W = ch.train_batch_som(W0, x, rows=rows, cols=cols, sigma0=sigma0, eta0=eta0,
                           n_iter=passes)
    torch.testing.assert_close(W, ch.minisom_weights(som), rtol=0, atol=1e-10)


def test_one_batch_pass_with_eta_one_is_the_neighbourhood_weighted_mean():
    """(23.9) by a loop over samples: transposing H or normalizing over samples instead of
    units fails."""
    g = torch.Generator().manual_seed(0)
    X = torch.rand(40, 3, generator=g, dtype=DT)
    W0 = torch.rand(6, 3, generator=g, dtype=DT)
    coords = ch.grid_coordinates(2, 3).double()
    num, den = torch.zeros(6, 3, dtype=DT), torch.zeros(6, dtype=DT)
    for x in X:
        h = ch.gaussian_neighbourhood(coords, int(((W0 - x) ** 2).sum(1).argmin()), 1.2)
        num += h[:, None] * x
        den += h
    W = ch.train_batch_som(W0, X, rows=2, cols=3, sigma0=1.2, eta0=1.0, n_iter=1)
    torch.testing.assert_close(W, num / den[:, None])


# ------------------------------------------------------------------ the map as a classifier

def test_unit_labels_majority_vote_and_empty_units():
    """Catches a vote over the wrong axis, and an empty unit labelled 0 instead of by its
    nearest sample."""
    W = torch.tensor([[0.0], [5.0], [10.0]])
    X = torch.tensor([[0.1], [0.2], [-0.1], [5.1], [4.9]])
    y = torch.tensor([1, 1, 2, 3, 3])
    labels, hits = ch.unit_labels(W, X, y, 4)
    assert labels.tolist() == [1, 3, 3], "unit 3 wins nothing: label of the nearest sample (5.1)"
    assert hits.tolist() == [[0, 2, 1, 0], [0, 0, 0, 2], [0, 0, 0, 0]]
    assert ch.map_accuracy(W, labels, X, y) == pytest.approx(4 / 5)


def test_prototype_canvas_puts_unit_k_in_row_k_div_cols():
    """Catches transposed tiles (unit k drawn in column k // cols) or missing gaps."""
    W = torch.arange(6.0)[:, None].expand(6, 64)  # unit k is an 8 x 8 image of the value k
    canvas = ch.prototype_canvas(W, 2, 3)
    assert canvas.shape == (2 * 9 - 1, 3 * 9 - 1)
    for i, j in itertools.product(range(2), range(3)):
        assert float(canvas[9 * i + 3, 9 * j + 3]) == i * 3 + j
    assert torch.isnan(canvas[8, 0]) and torch.isnan(canvas[0, 8]), "gaps between tiles"


# ------------------------------------------------------------------ bad inputs

def test_bad_inputs_name_the_expected_shape():
    """Each public function rejects a wrong shape with a message naming what it expected."""
    W = torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"X must be \(N, 3\) to match W \(4, 3\); got \(5,\)"):
        ch.sq_distances(torch.zeros(5), W)
    with pytest.raises(ValueError, match=r"W must be \(K, D\); got \(4,\)"):
        ch.best_matching_units(torch.zeros(2, 3), torch.zeros(4))
    with pytest.raises(ValueError, match=r"x must be \(3,\); got \(2,\)"):
        ch.som_step(W, torch.zeros(2), torch.zeros(4, 4), 0.5, 1.0)
    with pytest.raises(ValueError, match=r"W must be \(rows \* cols, D\) = \(6, D\); got \(4, 3\)"):
        ch.train_som(W, torch.zeros(10, 3), torch.zeros(5, dtype=torch.long), rows=2, cols=3,
                     sigma0=1.0, eta0=0.5)
    with pytest.raises(ValueError, match=r"order must index the 10 rows of X; got values in \[0, 10\]"):
        ch.train_som(W, torch.zeros(10, 3), torch.tensor([0, 10]), rows=2, cols=2, sigma0=1.0,
                     eta0=0.5)
    with pytest.raises(ValueError, match=r"order must be \(T,\) with T >= 1; got \(0,\)"):
        ch.train_som(W, torch.zeros(10, 3), torch.zeros(0, dtype=torch.long), rows=2, cols=2,
                     sigma0=1.0, eta0=0.5)
    with pytest.raises(ValueError, match="scaling must be 'mean' or 'sum'; got 'max'"):
        ch.u_matrix(W, 2, 2, "max")
    with pytest.raises(ValueError, match="at least two units"):
        ch.topographic_error(torch.zeros(2, 3), torch.zeros(1, 3), 1, 1)


# ------------------------------------------------------------------ exercise 3

def solved_topographic_error_4(X, W, rows, cols):
    best_two = ch.sq_distances(X, W).topk(2, dim=1, largest=False).indices
    coords = ch.grid_coordinates(rows, cols).to(W.device)
    gap = (coords[best_two[:, 0]] - coords[best_two[:, 1]]).abs().sum(1)  # city-block
    return int((gap > 1).sum()) / len(gap)


def test_exercise_topographic_error_4(capsys):
    """The stub is 'not attempted', the city-block solution passes, and two wrong answers fail:
    MiniSom's 8-neighbour TE and its complement."""
    assert check("Exercise 3", ch.topographic_error_4, ch.test_topographic_error_4) is None
    assert "not attempted yet" in capsys.readouterr().out
    assert check("Exercise 3", solved_topographic_error_4, ch.test_topographic_error_4) is True
    with pytest.raises(AssertionError, match="two of three best pairs are diagonal"):
        check("Exercise 3", ch.topographic_error, ch.test_topographic_error_4)  # 8-neighbours
    with pytest.raises(AssertionError, match="expected 2/3"):  # the fraction of *good* samples
        check("Exercise 3", lambda X, W, r, c: 1 - solved_topographic_error_4(X, W, r, c),
              ch.test_topographic_error_4)
