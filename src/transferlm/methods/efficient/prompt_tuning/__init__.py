"""Prompt tuning (Lester et al., 2021): k trainable soft tokens prepended to the input embeddings."""
