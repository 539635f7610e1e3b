"""Prefix-tuning (Li & Liang, 2021): trainable key/value prefixes in every attention layer."""
