"""vitserve: export, verify and serve Vision Transformer image classifiers."""

__version__ = "0.1.0"
