"""Synthetic Cell Painting screens and profile tables for demos, tests and benchmarks."""

from cpzarr.synthetic._profiles import make_profiles
from cpzarr.synthetic._screen import TRAITS, ScreenInfo, check_screen_arguments, make_screen, render_site

__all__ = ["make_screen", "check_screen_arguments", "render_site", "ScreenInfo", "TRAITS", "make_profiles"]
