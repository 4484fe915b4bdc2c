"""One writer per store: a lock file beside the store, naming its holder.

Every writer of a store (ingest, locate, features, profiles, ``cpzarr run``) holds the lock of
the store while it writes; a second writer gets a :class:`~cpzarr.errors.StoreError` naming the
holder (user, process id, host, command, since when).

The lock is the file ``.<store name>.cpzarr-lock`` beside the store (not inside it: ingest
replaces the store folder when it starts afresh), created with ``O_CREAT | O_EXCL`` so two
processes cannot both create it. It holds JSON: ``user``, ``pid``, ``host``, ``started``,
``purpose`` and a random ``token``.

Stale locks: a lock made on this host whose process no longer runs (killed, crashed) is stale
and is taken over. A lock made on another host is never broken automatically, since this host
cannot see that process; the error says to delete the file once that process is gone.

On an object store (S3, GCS), which has no exclusive create that fsspec exposes everywhere, the
lock is the object ``.<store name>.cpzarr-lock`` beside the store, written only when absent and
read back to check that this writer's token is the one stored: two writers starting within the
same fraction of a second could both pass, so on object stores the lock guards against the
common mistake (a second run on a store in use), not against a race. The same stale rule holds.

Within one process the lock is re-entrant: ``cpzarr run`` holds it, and the ingest it calls
takes it again. Dask workers never take it: a writer running inside a worker's task writes on
behalf of the client that planned the work and holds the lock (``cpzarr run`` runs its profile
steps as worker tasks), so :class:`store_lock` is a no-op there, and so are the sweeps of
:func:`cpzarr.store.sweep_scratch` (another task's files may be in flight).
"""

from __future__ import annotations

import errno
import getpass
import json
import os
import socket
import threading
import uuid
from pathlib import Path

from cpzarr.errors import StoreError
from cpzarr.store._location import Location, as_location

__all__ = ["store_lock", "lock_path", "lock_holder", "in_worker"]

_HELD: dict[str, list] = {}  # lock path -> [token, depth], for this process
_GUARD = threading.Lock()


def in_worker() -> bool:
    """True inside a task of a ``distributed`` worker (whose client holds the store's lock)."""
    import sys

    distributed = sys.modules.get("distributed")  # not imported: no worker in this process
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


def lock_path(store) -> Path:
    """The lock file of ``store``: ``.<name>.cpzarr-lock`` beside it.

    Examples
    --------
    >>> lock_path("/data/screen.zarr").name
    '.screen.zarr.cpzarr-lock'
    """
    store = as_location(store)
    return store.parent / f".{store.name}.cpzarr-lock"


def lock_holder(store) -> dict | None:
    """The record of the lock's holder (``user``, ``pid``, ``host``, ``started``, ``purpose``), or None."""
    try:
        return json.loads(lock_path(store).read_text())
    except (OSError, ValueError):
        return None


class store_lock:
    """Hold the write lock of ``store`` for a ``with`` block.

    Parameters
    ----------
    store : str or Path
        The store (it need not exist yet; its parent folder is created).
    purpose : str
        What the holder does, shown to a second writer (``"ingest"``, ``"features"``, …).

    Raises
    ------
    StoreError
        Another live process holds the lock; the message names it.

    Examples
    --------
    >>> with store_lock("screen.zarr", "locate"):  # doctest: +SKIP
    ...     write_node("screen.zarr", "cells", cells)
    """

    def __init__(self, store, purpose="write"):
        self.path = lock_path(store)
        self.store = as_location(store)
        self.purpose = purpose

    def __enter__(self):
        self.skipped = in_worker()
        if self.skipped:
            return self
        key = _key(self.path)
        with _GUARD:
            held = _HELD.get(key)
            if held is not None and _owned(self.path, held[0]):
                held[1] += 1
                return self
            token = _acquire(self.path, self.store, self.purpose)
            _HELD[key] = [token, 1]
        return self

    def __exit__(self, *exc):
        if self.skipped:
            return False
        key = _key(self.path)
        with _GUARD:
            held = _HELD.get(key)
            if held is None:
                return False
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                if _owned(self.path, held[0]):
                    self.path.unlink(missing_ok=True)
        return False


def _key(path) -> str:
    return path.url if isinstance(path, Location) else str(path.absolute())


def _acquire(path, store, purpose: str) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    record = {
        "user": _user(), "pid": os.getpid(), "host": socket.gethostname(),
        "started": _now(), "purpose": purpose, "token": token,
    }
    for _ in range(3):
        try:
            fd = _create(path, record)
        except FileExistsError:
            holder = _read(path)
            if holder is None or _stale(holder):
                _break(path, holder)
                continue
            raise StoreError(_busy_message(store, path, holder)) from None
        if fd is not None:
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
        return token
    raise StoreError(f"Could not take the write lock {path} of {store}: it keeps changing; try again.")


def _create(path, record):
    """Create the lock file (an open descriptor to write the record into), or raise FileExistsError.

    On an object store the record is written here: put if absent, then read back.
    """
    if not isinstance(path, Location):
        return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    if path.exists():
        raise FileExistsError(path.url)
    path.write_text(json.dumps(record))
    if _read(path).get("token") != record["token"]:
        raise FileExistsError(path.url)  # another writer's put landed last: theirs
    return None


def _busy_message(store, path, holder) -> str:
    return (
        f"The store {store} is being written by another process: {holder.get('purpose', 'a writer')} "
        f"by {holder.get('user', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
        f"since {holder.get('started', '?')}). Wait for it to finish; if that process is gone "
        f"(another machine's lock is never broken automatically), delete {path}."
    )


def _read(path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}  # released meanwhile: try again
    except (OSError, ValueError):
        return None  # half-written by a writer killed at that moment: stale


def _stale(holder: dict) -> bool:
    if not holder:
        return True
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.ESRCH
    return _zombie(pid)


def _zombie(pid: int) -> bool:
    """True when ``pid`` is a zombie (exited, not yet reaped): it no longer writes."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _break(path, holder) -> None:
    if isinstance(path, Location):
        path.unlink(missing_ok=True)
        return
    # Renamed aside first, so that of two processes breaking the same stale lock only one removes it.
    aside = path.with_name(f"{path.name}.stale-{uuid.uuid4().hex}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return
    moved = _read(aside)
    if moved and holder and moved.get("token") != holder.get("token"):
        # another process broke it first and took the lock meanwhile: give its lock back
        try:
            os.link(aside, path)
        except OSError:
            pass
    aside.unlink(missing_ok=True)


def _owned(path, token: str) -> bool:
    holder = _read(path)
    return bool(holder) and holder.get("token") == token


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment (containers)
        return str(os.getuid()) if hasattr(os, "getuid") else "?"


def _now() -> str:
    from datetime import datetime, timezone

    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()
