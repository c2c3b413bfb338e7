"""PUMGPT (arXiv 2308.09568 v1): a frozen causal LM reads K visual tokens through zero-initialised, gated layer-wise adapters."""
