"""The reference: ``interp`` (Linux semantics for a whole system, written to be
read as the spec), ``profile`` (its semantic knobs) and ``helpers`` (the helper
and kfunc models every engine shares, so helpers never cause a divergence)."""

__all__ = ["helpers", "interp", "profile"]
