"""Bottleneck adapters (Houlsby et al., 2019; Pfeiffer et al., 2021) after attention and FFN sublayers."""
