"""Exceptions raised by cpzarr.

Every message names what is wrong (file, row, well, field) and what to do about it.
"""


class CpzarrError(Exception):
    """Base class of every error cpzarr raises on purpose."""


class InputError(CpzarrError, ValueError):
    """Bad user input: an image table, a platemap, a location file, a profile table.

    ``problems`` lists every offender found, so that one run reports them all.
    """

    def __init__(self, message, problems=()):
        self.problems = list(problems)
        if self.problems:
            shown = "\n".join(f"  - {p}" for p in self.problems[:20])
            more = len(self.problems) - 20
            if more > 0:
                shown += f"\n  ... and {more} more"
            message = f"{message}\n{shown}"
        super().__init__(message)


class StoreError(CpzarrError):
    """The store is missing, incomplete or does not have the node asked for."""


class ConfigError(CpzarrError, ValueError):
    """An experiment config is invalid; ``problems`` lists each key path at fault."""

    def __init__(self, message, problems=()):
        self.problems = list(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class ClusterError(CpzarrError):
    """No Dask scheduler at the address given, or a local cluster that cannot start."""


class WeightsError(CpzarrError):
    """Model weights cannot be had, or do not match their claimed checksum."""
