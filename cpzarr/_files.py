"""Small files (reports, metrics, run state) written atomically and readable by others."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file renamed over it.

    A reader sees the old file or the new one, never a half-written one, and an interrupted
    write leaves no file under the final name. The file gets the permissions any new file of
    the user gets (``0o666`` less the umask, e.g. ``0o644``), as ``open`` gives: a temporary file
    from :func:`tempfile.mkstemp` would be ``0o600``, readable by its owner only.

    Parameters
    ----------
    path : path
        Final name; its folder must exist.
    data : str or bytes
        Text (written as UTF-8) or bytes.

    Returns
    -------
    pathlib.Path
        ``path``.

    Examples
    --------
    >>> write_atomic("/tmp/metrics.csv", "metric,value\\nmAP,0.5\\n")  # doctest: +SKIP
    """
    path = Path(path)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
    raw = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    try:
        # "x": created here (never an existing file), with the umask's permissions.
        with open(tmp, "xb") as fh:
            fh.write(raw)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
