"""Synthetic profile tables (filled in by the profiles work)."""


def make_profiles(*args, **kwargs):
    raise NotImplementedError
