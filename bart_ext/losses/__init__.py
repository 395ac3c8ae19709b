"""Losses computed from decoder features and the output embedding in chunks of tokens.

``fused_linear_cross_entropy`` is the core (torch only); ``user_dir/bart_cross_entropy.py`` and
``user_dir/bart_label_smoothed_cross_entropy.py`` register it as fairseq criteria.
"""
from bart_ext.losses.chunked import auto_chunk_tokens, fused_linear_cross_entropy, reference_linear_cross_entropy

__all__ = ["auto_chunk_tokens", "fused_linear_cross_entropy", "reference_linear_cross_entropy"]
