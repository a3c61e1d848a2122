"""Calibration and evaluation data: the default text corpus and tokenizers."""
