"""Every checkpoint format quamba-edge reads or writes, by family.

common.py: where a checkpoint is (`default`, a directory, a hub id), its config.json, its weights
(safetensors, sharded indexes, weights_only pickles), and which family a directory holds. mamba.py,
wav2vec2.py (with keyword spotters) and adapool.py: each family's layouts. Import from the submodules.
"""
