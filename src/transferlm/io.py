"""Atomic file output: nothing is ever half-written.

Files are written to a temporary sibling and renamed into place (``os.replace`` is
atomic on POSIX). Directories are built under a temporary name and renamed.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock (see output_lock)
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)
# output_lock's file in an output folder: every check of a folder's contents ignores it (see ignorable).
LOCK_FILE = ".transferlm.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600 files; give the result the permissions a plain open() would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def as_json(obj: Any) -> Any:
    """``obj`` as a file written by :func:`write_json` holds it when read back (tuples become lists)."""
    return json.loads(json.dumps(obj, default=_json_default))


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths show up in metrics and configs.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _ordinary_permissions(root: Path) -> None:
    """What plain mkdir/open would give: mkdtemp makes 0700 folders, and safetensors (0.8) writes 0600 files,
    which another user (a serving account, a container) could not read."""
    mask = _umask()
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o777 & ~mask)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                executable = os.stat(path).st_mode & 0o111
                os.chmod(path, (0o666 | (0o111 if executable else 0)) & ~mask)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temporary name; rename it to ``path`` on success.

    An existing ``path`` is replaced only once the new one is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        _ordinary_permissions(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def check_output_dir(path: str | os.PathLike[str], what: str = "--output") -> Path:
    """Fail now, before any work, when folder ``path`` cannot be made or written: an existing file in its place
    (or above it), or a parent this process may not write in. Creates nothing."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise ConfigError(f"{what} {target} is an existing file, not a folder; give a folder path (new or existing)")
    ancestor = target
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ConfigError(f"{what} {target}: {ancestor} is a file, so no folder can be made below it; "
                          "give another path")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as e:
        raise ConfigError(f"{what} {target}: cannot write in {ancestor} ({e.strerror}); give a folder you may "
                          "write in") from None
    return target


def ignorable(path: str | os.PathLike[str]) -> bool:
    """Whether a file in an output folder is no output of anyone's: output_lock's lock file, left in place on
    release (see output_lock). Checks of a folder's contents (empty? an earlier output?) skip it."""
    return Path(path).name == LOCK_FILE


def lock_file_of(folder: str | os.PathLike[str], *, beside: bool = False) -> Path:
    """Where output_lock(folder) keeps its lock file: in the folder, or (``beside``) next to it."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.lock") if beside else folder / LOCK_FILE


# Locks this process holds: (device, inode) of the lock file -> [fd, depth]. flock locks belong to an open file
# description, so a second open + flock of the same file in this process would conflict with the first:
# re-entering (compare's run in a sub-folder of a locked reproduce step, reproduce's step around pretrain)
# counts instead.
_HELD: dict[tuple[int, int], list[int]] = {}
_HELD_GUARD = threading.Lock()
_ADVICE = "wait for it to finish, or give another --output"


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike[str] | None, *, beside: bool = False,
                advice: str = _ADVICE) -> Iterator[None]:
    """Hold an exclusive, advisory lock on output folder ``folder`` for the block: two transferlm processes
    never train, checkpoint and resume in one folder at once. Another process holding it fails this one fast
    with a one-line ConfigError naming the folder and its pid (no waiting). Re-entrant in one process.
    ``folder`` None (a run without an output folder: nothing to share) locks nothing.

    The lock is ``flock`` on a small file: ``LOCK_FILE`` in the folder (made with the folder if needed), or
    ``beside`` it (``.<name>.lock``) for a folder that is replaced whole, such as pretrain's, whose lock file
    would be swapped out with it. The OS releases it when the holder exits or is killed, so a dead run leaves no
    stale lock. The file holds the holder's pid and command line, for the message only. It stays in the folder
    on release (checks of a folder's contents ignore it: ``ignorable``), except where the lock made the folder
    and nothing else was written in it (an error before any output: nothing is left) and beside a folder.
    Removing it is safe because a locker checks, once it holds the lock, that the file it locked is still the
    one under that name (else it locked a removed file, and tries again). Secondary ranks of a multi-process
    launch (RANK > 0) share their rank 0's lock.
    """
    if folder is None:
        yield
        return
    if fcntl is None:
        # Windows has no flock (msvcrt.locking locks byte ranges, with other semantics, and a locked file there
        # cannot be removed or renamed); transferlm trains on POSIX systems, so on Windows the lock is left out.
        yield
        return
    if os.environ.get("RANK", "0") not in ("", "0"):
        yield  # one launch, one lock: rank 0 holds it for the processes it trains with
        return
    folder = Path(folder)
    path = lock_file_of(folder, beside=beside)
    made = None  # the topmost folder the lock makes (the folder or an ancestor): removed again if left empty
    if not beside:
        for up in (folder, *folder.parents):
            if up.exists():
                break
            made = up
    key = _acquire(path, folder, advice)
    try:
        yield
    finally:
        _release(key, path, folder, beside=beside, made=made)


def _acquire(path: Path, folder: Path, advice: str) -> tuple[int, int] | None:
    """Lock ``path`` (or count one more hold of it); its key in ``_HELD``, None where locks are unsupported."""
    while True:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except FileNotFoundError:  # the folder was removed between the two calls (a release): again
            continue
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with _HELD_GUARD:
            held = _HELD.get(key)
            if held is not None:
                os.close(fd)
                held[1] += 1
                return key
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    holder = _holder(fd)
                    os.close(fd)
                    raise ConfigError(f"{folder} is in use by another transferlm process ({holder}); {advice}") \
                        from None
                # A file system without locks (some network mounts): run unlocked rather than not at all.
                log.warning("cannot lock %s (%s); going on without the output-folder lock", path, e.strerror)
                os.close(fd)
                return None
            try:
                now = os.stat(path)
                same = (now.st_dev, now.st_ino) == key
            except FileNotFoundError:
                same = False
            if not same:  # locked a file its holder removed on release: lock the one there now
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {' '.join([sys.executable, *sys.argv])}\n".encode(errors="replace"))
            _HELD[key] = [fd, 1]
            return key


def _release(key: tuple[int, int] | None, path: Path, folder: Path, *, beside: bool, made: Path | None) -> None:
    with _HELD_GUARD:
        held = _HELD.get(key) if key is not None else None
        if held is None:
            return
        held[1] -= 1
        if held[1]:
            return
        del _HELD[key]
        try:
            # Still held while removing: see output_lock on why removing is safe.
            if beside or (made is not None and [p.name for p in folder.iterdir()] == [LOCK_FILE]):
                path.unlink(missing_ok=True)
                for up in (folder, *folder.parents) if made is not None else ():
                    up.rmdir()  # OSError (another process's files in it by now): stop, keep the rest
                    if up == made:
                        break
        except OSError:
            pass
        finally:
            os.close(held[0])  # closing the only descriptor releases the flock


def _holder(fd: int) -> str:
    """'pid N' from the lock file's first word (what the holder wrote), or 'pid unknown' (it is still writing)."""
    try:
        first = os.pread(fd, 4096, 0).split(maxsplit=1)
        return f"pid {int(first[0])}"
    except (OSError, ValueError, IndexError):
        return "pid unknown"
