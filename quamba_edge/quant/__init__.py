"""Quamba W8A8 post-training quantization: observers, Hadamard rotations, int8 ops, recipes, modules."""
