"""One training process per workdir: a lock file naming its owner."""
from __future__ import annotations

import json
import os
import pathlib
import socket

from jaxlab.errors import ConfigError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class WorkdirLock:
    """`with WorkdirLock(dir):` holds `<dir>/.lock` (pid and host) for the run's lifetime.

    A lock left by a dead process on this host is stale and taken over; one held by a live
    process, or by another host (whose processes we cannot see), is refused.
    """

    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / ".lock"
        self.owner = {"pid": os.getpid(), "host": socket.gethostname()}

    def __enter__(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and (holder.get("host") != self.owner["host"]
                                           or _alive(int(holder.get("pid", -1)))):
                    raise ConfigError(
                        f"workdir {str(self.path.parent)!r} is in use by process {holder.get('pid')} "
                        f"on {holder.get('host')}; wait for it, stop it, or use another --workdir")
                self.path.unlink(missing_ok=True)  # stale: its owner is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self.owner, f)
            return self
        raise ConfigError(f"could not take the lock {str(self.path)!r}; another process races for it")

    def _holder(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None  # unreadable or half-written: treat as stale

    def __exit__(self, *exc) -> None:
        if self._holder() == self.owner:
            self.path.unlink(missing_ok=True)
