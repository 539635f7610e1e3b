"""LoRA through PEFT: low-rank updates on the attention (or all) projections."""
