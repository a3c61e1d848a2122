"""fp reference models, one file per family. Nothing here knows about quantization."""
