"""The plain tanh RNN (Elman 1990): the baseline whose vanishing gradients motivate gating."""

import seqengine


@seqengine.hookimpl
def seqengine_register_cells(register):
    register(seqengine.Cell(
        name="rnn",
        state=["h"],
        doc="Elman RNN with tanh, two biases as torch.nn.RNN.",
        equations="""
            h = tanh(W @ x + b_i + U @ h_prev + b_h)
        """,
    ))
