"""Evaluation: accuracy and macro-F1, confidence intervals and paired tests, GMACs."""
