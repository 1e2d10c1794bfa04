"""UGRNN and IndRNN as seqengine cells: one line per equation of the paper.

UGRNN, the update-gate RNN of Collins, Sohl-Dickstein & Sussillo, "Capacity and
Trainability in Recurrent Neural Networks", ICLR 2017 (arXiv:1611.09913),
Section 2 / Appendix: a vanilla RNN candidate mixed with the previous state by
one update gate (a GRU without the reset gate)::

    c_t = tanh(W_cx x_t + W_ch h_{t-1} + b_c)
    g_t = sigmoid(W_gx x_t + W_gh h_{t-1} + b_g)
    h_t = g_t * h_{t-1} + (1 - g_t) * c_t

IndRNN, the independently recurrent network of Li, Li, Cook, Zhu & Gao,
"Independently Recurrent Neural Network (IndRNN): Building A Longer and Deeper
RNN", CVPR 2018 (arXiv:1803.04831), Eq. (2): each unit sees only its own past
through a recurrent *vector* u (Hadamard product instead of a matrix)::

    h_t = relu(W x_t + u * h_{t-1} + b)

Section 3.1 of the IndRNN paper keeps |u_j| within [0, 2^(1/T)] to neither vanish
nor explode; the paper's ReLU models initialise u uniformly in [0, 1], as `init`
does here.
"""

import seqengine

UGRNN = seqengine.Cell(
    name="ugrnn",
    state=["h"],
    doc="Update-gate RNN (Collins et al., ICLR 2017, arXiv:1611.09913): one update gate g mixes "
        "h_prev with a tanh candidate c.",
    equations="""
        c = tanh(W_cx @ x + W_ch @ h_prev + b_c)
        g = sigmoid(W_gx @ x + W_gh @ h_prev + b_g)
        h = g * h_prev + (1 - g) * c
    """,
    params=["W_cx", "W_ch", "b_c", "W_gx", "W_gh", "b_g"],
)

INDRNN = seqengine.Cell(
    name="indrnn",
    state=["h"],
    doc="Independently recurrent network (Li et al., CVPR 2018, arXiv:1803.04831, Eq. 2): "
        "relu with an elementwise recurrent weight u.",
    equations="""
        h = relu(W @ x + u * h_prev + b)
    """,
    params=["W", "u", "b"],
    init={"u": lambda shape, rng: rng.uniform(0.0, 1.0, shape), "b": 0.0},
)


@seqengine.hookimpl
def seqengine_register_cells(register):
    register(UGRNN)
    register(INDRNN)
