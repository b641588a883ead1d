"""Diagnostics reused by experiments; import the submodule you need (jaxlab.analysis.lengths, ...)."""


def __getattr__(name):
    # Lazy, so importing jaxlab.analysis stays free of imports: jaxlab.analysis.eval_lengths.
    if name == "eval_lengths":
        from jaxlab.analysis.lengths import eval_lengths
        return eval_lengths
    raise AttributeError(f"module 'jaxlab.analysis' has no attribute {name!r}")
