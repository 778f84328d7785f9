"""The built-in analyses, registered with the engine (`workbench.analysis`) through its entry-point group
`workbench.analyses`, as plugins are: weights, loss, activations, lens, similarity, memorisation, evaluation.
Importing this package registers them."""

from workbench.analyses import activations, evaluation, lens, loss, memorization, similarity, weights

__all__ = ["activations", "evaluation", "lens", "loss", "memorization", "similarity", "weights"]
