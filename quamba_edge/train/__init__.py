"""Pre-training objectives (ccc-wav2vec 2.0 and the wav2vec 2.0 baseline) as pure tensor functions."""
