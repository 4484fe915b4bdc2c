"""Synthetic Cell Painting screens and profile tables for demos, tests and benchmarks."""

from cpzarr.synthetic._profiles import make_profiles
from cpzarr.synthetic._screen import make_screen

__all__ = ["make_screen", "make_profiles"]
