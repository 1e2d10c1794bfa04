"""Declaration -> expression graph -> schedule -> backend source -> kernels.

- `parse`: the equations (Python `ast`, never eval'd) to a `Graph`.
- `differentiate`: the derivative rule table, one entry per op.
- `schedule`: what is hoisted, what stays in the time loop, what is saved.
- backends (`seqengine.backends.cpu`) emit and compile the kernels.
"""
