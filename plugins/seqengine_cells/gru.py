"""Gated recurrent units: PyTorch's reset-after form, and Cho et al.'s reset-before form."""

import seqengine


@seqengine.hookimpl
def seqengine_register_cells(register):
    register(seqengine.Cell(
        name="gru",
        state=["h"],
        doc="GRU, reset-after form with gate order r, z, n and two biases per gate exactly as torch.nn.GRU.",
        equations="""
            r = sigmoid(W_r @ x + b_ir + U_r @ h_prev + b_hr)
            z = sigmoid(W_z @ x + b_iz + U_z @ h_prev + b_hz)
            n = tanh(W_n @ x + b_in + r * (U_n @ h_prev + b_hn))
            h = (1 - z) * n + z * h_prev
        """,
    ))
    register(seqengine.Cell(
        name="gru_cho",
        state=["h"],
        doc="GRU of Cho et al. 2014 (reset before the recurrent product): the product U_n @ (r * h_prev) "
            "needs r first, so the step runs in two phases.",
        equations="""
            r = sigmoid(W_r @ x + U_r @ h_prev + b_r)
            z = sigmoid(W_z @ x + U_z @ h_prev + b_z)
            n = tanh(W_n @ x + U_n @ (r * h_prev) + b_n)
            h = (1 - z) * h_prev + z * n
        """,
    ))
