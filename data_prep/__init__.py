"""Dataset preparation scripts (``python -m data_prep.make_synthetic --out DIR``)."""
