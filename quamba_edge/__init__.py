"""quamba-edge: int8 state-space and speech models, from checkpoint to Jetson."""

__version__ = "0.2.0"
