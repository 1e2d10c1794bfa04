"""The LSTM family: standard (forget gate), peephole, coupled input-forget gates."""

import seqengine


@seqengine.hookimpl
def seqengine_register_cells(register):
    register(seqengine.Cell(
        name="lstm",
        state=["h", "c"],
        doc="LSTM with a forget gate (Hochreiter & Schmidhuber 1997; Gers et al. 2000), "
            "gate order i, f, g, o and two biases per gate exactly as torch.nn.LSTM.",
        equations="""
            i = sigmoid(W_i @ x + b_ii + U_i @ h_prev + b_hi)
            f = sigmoid(W_f @ x + b_if + U_f @ h_prev + b_hf)
            g = tanh(W_g @ x + b_ig + U_g @ h_prev + b_hg)
            o = sigmoid(W_o @ x + b_io + U_o @ h_prev + b_ho)
            c = f * c_prev + i * g
            h = o * tanh(c)
        """,
    ))
    register(seqengine.Cell(
        name="peephole",
        state=["h", "c"],
        doc="Peephole LSTM (Gers & Schmidhuber 2000): i and f look at c_prev, o at the new c.",
        equations="""
            i = sigmoid(W_i @ x + U_i @ h_prev + p_i * c_prev + b_i)
            f = sigmoid(W_f @ x + U_f @ h_prev + p_f * c_prev + b_f)
            g = tanh(W_g @ x + U_g @ h_prev + b_g)
            c = f * c_prev + i * g
            o = sigmoid(W_o @ x + U_o @ h_prev + p_o * c + b_o)
            h = o * tanh(c)
        """,
    ))
    register(seqengine.Cell(
        name="coupled",
        state=["h", "c"],
        doc="Coupled input and forget gates, CIFG (Greff et al. 2017, 'LSTM: A Search Space Odyssey'): "
            "one gate decides both what to forget and what to add, i = 1 - f.",
        equations="""
            f = sigmoid(W_f @ x + U_f @ h_prev + b_f)
            g = tanh(W_g @ x + U_g @ h_prev + b_g)
            o = sigmoid(W_o @ x + U_o @ h_prev + b_o)
            c = f * c_prev + (1 - f) * g
            h = o * tanh(c)
        """,
        init={"b_f": 1.0},
    ))
