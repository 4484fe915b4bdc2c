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


class ResourceError(CpzarrError):
    """The machine ran out of disk space or memory (or an I/O call failed) during a stage."""


def resource_error(stage, path, error):
    """A :class:`ResourceError` for an ``OSError`` or ``MemoryError`` raised inside ``stage``.

    Names the stage, the file (the error's own, else ``path``) and what to do; says that
    re-running the same command resumes, since every stage writes whole units atomically.

    Examples
    --------
    >>> import errno
    >>> str(resource_error("ingest", "s.zarr", OSError(errno.ENOSPC, "No space left on device")))[:43]
    'ingest ran out of disk space writing s.zarr'
    """
    import errno

    resume = "then re-run the same command: what was completed is kept and the rest resumes"
    if isinstance(error, MemoryError):
        return ResourceError(
            f"{stage} ran out of memory (working on {path}); give it more memory or fewer workers "
            f"(cluster.n_workers, cluster.memory_limit), {resume}"
        )
    where = getattr(error, "filename", None) or path
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"{stage} ran out of disk space writing {where} ({error.strerror}); free space, {resume}")
    return ResourceError(f"{stage} failed on {where}: {type(error).__name__}: {error}; fix it, {resume}")
