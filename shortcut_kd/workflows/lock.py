"""One run per output folder: ``OutputLock(folder)`` holds ``folder/.shortcut-kd.lock`` while a run writes there.

Two runs writing the same ``output_dir`` (the same splits, checkpoints and stage records) would corrupt each
other's outputs without an error. :class:`OutputLock` is taken around every stage (``runner.run_stage``):

- the lock file is created with ``os.open(..., O_CREAT | O_EXCL)`` (exactly one process wins) and holds JSON:
  ``pid``, ``hostname``, ``started`` (a Unix time), ``command`` (the command line) and a ``token``;
- a lock held by a live process on this host refuses the second run with a :class:`ConfigError` naming the
  folder, the holder and the fix; a lock whose process is gone (a crashed run; on Linux also a pid reused by
  a later process), or whose file cannot be read, is stale: a warning is logged and the lock is taken over;
- a lock from another host (a shared file system) cannot be checked by its pid: the holder refreshes the
  file's modification time every ``heartbeat_s`` seconds, and one left untouched for ``stale_after_s`` is stale;
- the lock is re-entrant within one process (a stage runs its upstream stages, each taking the same folder's
  lock): a per-process depth count keyed by the resolved folder; the file is removed when the outermost holder
  exits, also on an exception.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from shortcut_kd.errors import ConfigError

__all__ = ["OutputLock", "LOCK_NAME", "read_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = ".shortcut-kd.lock"
"""The lock file's name inside the output folder."""

_HELD: dict[str, "_Held"] = {}
"""Resolved folder -> this process's hold on it (how many ``OutputLock`` contexts hold it, the token, the heartbeat)."""
_HELD_LOCK = threading.Lock()
_UNREADABLE_GRACE_S = 2.0
"""How long an empty / unreadable lock file may be in the middle of being written by its creator."""


def read_lock(path: str | os.PathLike) -> dict | None:
    """The JSON of a lock file, or None when it is missing, empty or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _command_line() -> str:
    try:
        with open("/proc/self/cmdline", "rb") as f:
            parts = [p.decode(errors="replace") for p in f.read().split(b"\0") if p]
        if parts:
            return " ".join(parts)
    except OSError:
        pass
    return " ".join([sys.executable, *sys.argv])


def _process_start_time(pid: int) -> float | None:
    """The Unix time process ``pid`` started at (Linux ``/proc``), or None when it cannot be told."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        with open("/proc/stat") as f:
            boot = next(float(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a zombie, finished but not reaped, counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _holder_alive(info: dict) -> bool:
    """Whether the process that wrote lock ``info`` (on this host) still runs: its pid exists and, where the
    start time can be read, it started before the lock was written (else the pid was reused)."""
    try:
        pid = int(info["pid"])
    except (KeyError, TypeError, ValueError):
        return False
    if not _pid_alive(pid):
        return False
    started, began = info.get("started"), _process_start_time(pid)
    if isinstance(started, (int, float)) and began is not None and began > float(started) + 2.0:
        return False
    return True


@dataclass
class _Held:
    """This process's hold on one folder's lock."""

    depth: int
    token: str
    stop: threading.Event
    beat: threading.Thread | None = None


class OutputLock:
    """Context manager that holds ``folder/.shortcut-kd.lock`` for one run at a time.

    Example::

        with OutputLock(exp.root):
            ...  # write splits, checkpoints, stage records

    Args:
        folder: the output folder (created when missing).
        heartbeat_s: how often the holder refreshes the file's modification time (for other hosts); 0: never.
        stale_after_s: a lock from another host untouched for this long is stale.

    Raises:
        ConfigError: on entry, when a live process (on this host, or another host's refreshing holder) holds the
            folder: key ``output_dir``, the folder, and the fix.
    """

    def __init__(self, folder: str | os.PathLike, heartbeat_s: float = 30.0, stale_after_s: float = 300.0) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.heartbeat_s, self.stale_after_s = float(heartbeat_s), float(stale_after_s)
        self._key: str | None = None

    # ------------------------------------------------------------------ context manager
    def __enter__(self) -> "OutputLock":
        self.folder.mkdir(parents=True, exist_ok=True)
        key = str(self.folder.resolve())
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is None:
                _HELD[key] = self._acquire()
            else:
                held.depth += 1
        self._key = key
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        key, self._key = self._key, None
        if key is None:
            return
        with _HELD_LOCK:
            held = _HELD.get(key)
            if held is None:
                return
            held.depth -= 1
            if held.depth == 0:
                del _HELD[key]
                self._release(held)

    # ------------------------------------------------------------------ acquire / release
    def _acquire(self) -> _Held:
        token = uuid.uuid4().hex
        info = {"pid": os.getpid(), "hostname": socket.gethostname(), "started": time.time(),
                "command": _command_line(), "token": token}
        for _ in range(10):  # lost races with other processes taking over the same stale lock: look again
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._handle_existing()
                continue
            try:
                os.write(fd, json.dumps(info, indent=1).encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            held = _Held(depth=1, token=token, stop=threading.Event())
            if self.heartbeat_s > 0:
                held.beat = threading.Thread(target=self._heartbeat, args=(held.stop,), daemon=True,
                                             name=f"shortcut-kd lock {self.folder}")
                held.beat.start()
            return held
        raise ConfigError("output_dir", str(self.folder),
                          f"another run keeps taking the lock {self.path}; wait for it, or use another --output-dir.")

    def _handle_existing(self) -> None:
        """Refuse a lock held by a live run; take over (remove) a stale one."""
        info = read_lock(self.path)
        while info is None:  # empty or unreadable: maybe its creator is writing it right now
            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return
            if age >= _UNREADABLE_GRACE_S:
                break
            time.sleep(0.1)
            info = read_lock(self.path)
        if info is not None and self._held_by_other(info):
            pid, host = info.get("pid"), info.get("hostname")
            here = host in (None, socket.gethostname())
            holder = f"pid {pid}" + ("" if here else f" on host {host}")
            since = info.get("started")
            when = time.strftime(" since %Y-%m-%d %H:%M:%S", time.localtime(since)) \
                if isinstance(since, (int, float)) else ""
            command = f" ({info['command']})" if info.get("command") else ""
            fix = f"wait for {holder} to finish, or use another --output-dir."
            if not here:
                fix += f" If that run has ended without releasing it, delete {self.path}."
            raise ConfigError("output_dir", str(self.folder),
                              f"the folder is in use by another run: {holder}{when}{command} holds {self.path}; {fix}")
        pid = info.get("pid") if info else None
        what = f"stale lock from pid {pid} (crashed run)" if pid is not None else "stale, unreadable lock (crashed run)"
        logger.warning("%s: %s, taking over", self.path, what)
        self._remove_stale(info)

    def _held_by_other(self, info: dict) -> bool:
        if info.get("hostname") in (None, socket.gethostname()):
            if info.get("pid") == os.getpid():  # this process, which does not hold it (see _HELD): left over
                return False
            return _holder_alive(info)
        try:  # another host: alive while its heartbeat refreshes the file
            return time.time() - self.path.stat().st_mtime < self.stale_after_s
        except FileNotFoundError:
            return False

    def _remove_stale(self, info: dict | None) -> None:
        """Remove the stale lock judged from ``info``, unless another process replaced it meanwhile."""
        aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # another process took it over first
            return
        if read_lock(aside) != info:  # moved a fresh lock of a process that won the takeover: put it back
            try:
                os.link(aside, self.path)
            except OSError:
                pass
        aside.unlink(missing_ok=True)

    def _release(self, held: _Held) -> None:
        held.stop.set()
        if held.beat is not None:
            held.beat.join(timeout=5)
        info = read_lock(self.path)
        if info is not None and info.get("token") != held.token:
            logger.warning("%s: the lock was taken over by pid %s; left in place", self.path, info.get("pid"))
            return
        self.path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ heartbeat
    def _heartbeat(self, stop: threading.Event) -> None:
        while not stop.wait(self.heartbeat_s):
            try:
                os.utime(self.path)
            except OSError:
                return

    @property
    def held(self) -> bool:
        """Whether this process holds the folder's lock now."""
        with _HELD_LOCK:
            return str(self.folder.resolve()) in _HELD

    def __repr__(self) -> str:
        return f"OutputLock({str(self.folder)!r})"
