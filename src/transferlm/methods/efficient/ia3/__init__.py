"""IA3 through PEFT: learned rescaling of keys, values and the FFN's inner activations."""
