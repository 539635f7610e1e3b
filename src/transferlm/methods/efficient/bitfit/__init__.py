"""BitFit (Ben Zaken et al., 2022): train only the bias terms."""
