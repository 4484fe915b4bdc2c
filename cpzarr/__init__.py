"""cpzarr: array-native image-based profiling of Cell Painting screens."""

__version__ = "0.1.0"
