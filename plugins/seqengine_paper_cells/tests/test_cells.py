"""The plugin's test suite: seqengine's own checks, one line for all cells, plus the papers' numbers."""

import numpy as np

import seqengine as se
from seqengine.testing import cell_test

# gradients vs finite differences, float32 vs float64, inference vs training, lengths, default init
test_paper_cells = cell_test("ugrnn", "indrnn")


def test_registered_by_this_plugin():
    se.load_plugins()
    owner = se.plugins.registry().owner
    assert owner["ugrnn"] == "paper_cells" and owner["indrnn"] == "paper_cells"


def test_ugrnn_matches_the_paper_equations():
    rnn = se.RNN("ugrnn", input_size=3, hidden_size=5, dtype=np.float64, seed=1)
    p = rnn.params
    x = np.random.default_rng(0).standard_normal((6, 2, 3))
    y, state = rnn.forward(x)
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    h = np.zeros((2, 5))
    for t in range(6):
        c = np.tanh(x[t] @ p["W_cx"].T + h @ p["W_ch"].T + p["b_c"])
        g = sig(x[t] @ p["W_gx"].T + h @ p["W_gh"].T + p["b_g"])
        h = g * h + (1 - g) * c
        np.testing.assert_allclose(y[t], h, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(state["h"][0], h, rtol=1e-12, atol=1e-12)


def test_indrnn_matches_the_paper_equations_and_init():
    rnn = se.RNN("indrnn", input_size=3, hidden_size=5, dtype=np.float64, seed=2)
    p = rnn.params
    assert p["u"].shape == (5,) and np.all((0 <= p["u"]) & (p["u"] <= 1)) and np.all(p["b"] == 0)
    x = np.random.default_rng(1).standard_normal((6, 2, 3))
    y, _ = rnn.forward(x)
    h = np.zeros((2, 5))
    for t in range(6):
        h = np.maximum(x[t] @ p["W"].T + p["u"] * h + p["b"], 0)
        np.testing.assert_allclose(y[t], h, rtol=1e-12, atol=1e-12)
