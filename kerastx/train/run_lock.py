"""The run directory's lock: one training at a time writes a run directory.

`run_dir/.lock` names the training that holds it (JSON: pid, host, since), and that
process keeps an exclusive `fcntl.flock` on the open file for as long as it trains
(`workflow.train`: training, averaging, the test evaluation, the export). The kernel
drops a flock when its process ends, however it ends (kill -9 included), so the flock,
not the file's contents, says whether the lock is held: a second training is refused
with one line naming the holder; a file left by a process that no longer holds it is
stale and is taken over with a warning that names the old holder. Where the filesystem
has no flock (some network filesystems) the contents decide: a holder on this host
whose process is gone is stale; any other holder is refused (the message says which
file to delete once that training has ended).

The file is emptied at the end, never deleted: deleting it would let a process that
opened the old file and one that creates a new file both hold "the" lock.

In a multi-worker run only the chief writes the run directory, so only it locks.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import logging
import os
import socket

from kerastx.config.rundir import LOCK_FILE, RunDirError, make_run_dir

log = logging.getLogger("kerastx")


class RunDirBusy(RunDirError):
    """Another training holds the run directory's lock."""


def _holder_text(holder: dict) -> str:
    return (
        f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')}, "
        f"since {holder.get('since', '?')}"
    )


def _pid_alive(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    return True


def _read(fd: int) -> dict:
    """The holder written in the lock file ({} when empty or not JSON)."""
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    try:
        holder = json.loads(b"".join(chunks).decode("utf-8"))
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


class RunLock:
    """The lock of one run directory; see the module docstring.

    Args:
        run_dir: str. The run directory (created if missing).

    Attributes:
        path: str. The lock file, `run_dir/.lock`.
        holder: dict. What this process wrote into it: pid, host, since.
    """

    def __init__(self, run_dir: str):
        self.run_dir = run_dir
        self.path = os.path.join(run_dir, LOCK_FILE)
        self.holder: dict = {}
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock.

        Raises:
            RunDirBusy: another training holds it (one line naming pid, host, since).
            RunDirError: the lock file cannot be created or written.
        """
        make_run_dir(self.run_dir)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise RunDirError(
                f"{self.path}: cannot create the run directory's lock file ({err.strerror}); "
                f"make {self.run_dir} writable or choose another run_dir"
            ) from None
        try:
            previous = self._lock(fd)
            self.holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(self.holder) + "\n").encode("utf-8"), 0)
            os.fsync(fd)
        except RunDirBusy:
            os.close(fd)
            raise
        except OSError as err:
            os.close(fd)
            raise RunDirError(
                f"{self.path}: cannot write the run directory's lock file ({err.strerror}); "
                f"make {self.run_dir} writable or choose another run_dir"
            ) from None
        self._fd = fd
        if previous:
            log.warning(
                "%s: took over a stale lock (%s): %s",
                self.path,
                _holder_text(previous),
                self._why_stale(previous),
            )

    def _lock(self, fd: int) -> dict:
        """flock (or, without flock, the contents); returns a stale previous holder."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except BlockingIOError:
            holder = _read(fd)
            raise RunDirBusy(
                f"{self.run_dir}: another training is using this run directory "
                f"({_holder_text(holder)}; lock file {self.path}); wait for it to end or stop "
                f"it, or choose another run_dir"
            ) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
            flocked = False
        previous = _read(fd)
        if not previous:
            return {}
        if not flocked and not self._dead_here(previous):
            raise RunDirBusy(
                f"{self.run_dir}: another training may be using this run directory "
                f"({_holder_text(previous)}; this filesystem has no file locks, so kerastx "
                f"cannot tell if it still runs); if it has ended, delete {self.path}"
            )
        return previous

    @staticmethod
    def _dead_here(holder: dict) -> bool:
        return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))

    def _why_stale(self, holder: dict) -> str:
        if holder.get("host") != socket.gethostname():
            return "that process, on another host, no longer holds it"
        if not _pid_alive(holder.get("pid")):
            return "that process is no longer running"
        return "that process no longer holds it"

    def release(self) -> None:
        """Empties the lock file and drops the lock (errors while emptying ignored)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        finally:
            os.close(fd)  # drops the flock


@contextlib.contextmanager
def hold(run_dir: str, enabled: bool = True):
    """`with hold(run_dir):` the run directory's lock, released on the way out (errors
    included); `enabled=False` (a worker that is not the chief) takes nothing."""
    if not enabled:
        yield None
        return
    lock = RunLock(run_dir)
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()
