"""Writing artifacts safely: nothing half-written is ever left at the destination."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import OutputError, ShaperError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_dir(dest: str | Path, force: bool = False,
                     inputs: dict[str, str | Path | None] | None = None) -> Path:
    """Fail early, before any long work, if ``dest`` cannot become a new folder (or is,
    lies inside or holds one of the command's ``inputs``); its parent."""
    check_not_input(dest, inputs or {})
    dest = Path(dest)
    if dest.exists() and not force:
        raise OutputError(f"output folder {dest} already exists; choose a new path "
                          "or pass --force to replace it")
    if dest.exists() and not dest.is_dir():
        raise OutputError(f"output path {dest} exists and is not a folder")
    parent = dest.parent
    for ancestor in (parent, *parent.parents):
        if ancestor.exists():
            if not ancestor.is_dir():
                raise OutputError(f"cannot write to {dest}: {ancestor} is a file, not a folder")
            if not os.access(ancestor, os.W_OK | os.X_OK):
                raise OutputError(f"cannot write to {dest}: {ancestor} is not writable")
            break
    return parent


def check_not_input(out: str | Path, inputs: dict[str, str | Path | None]
                    | Iterable[tuple[str, str | Path | None]]) -> None:
    """Refuse an output that is, lies inside, or holds one of the command's inputs (with
    --force it would replace what is being read). ``inputs`` maps an option to its path
    (or is a list of such pairs, for an option given several times)."""
    dest = Path(out).resolve()
    for option, given in (inputs.items() if isinstance(inputs, dict) else inputs):
        if given is None:
            continue
        src = Path(given).resolve()
        relation = ("is" if dest == src else "is inside" if src in dest.parents else
                    "holds" if dest in src.parents else "")
        if relation:
            raise OutputError(f"--out {out} {relation} the input {option} {given}; write the "
                              "output to a folder of its own")


@contextlib.contextmanager
def atomic_dir(dest: str | Path, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``dest``; on success it becomes ``dest``.

    On any exception the temporary folder is removed and ``dest`` is untouched. An existing
    ``dest`` is an error unless ``force``, in which case it is replaced only after the new
    content is complete.
    """
    dest = Path(dest)
    parent = check_output_dir(dest, force)
    created = _missing_ancestors(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"cannot write to {parent}: {exc.strerror or exc}") from None
    try:
        yield tmp
        _apply_umask(tmp)
        if dest.exists():
            old = tmp.with_name(tmp.name + ".old")
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)  # folders made for an output that was never written
        raise


def _missing_ancestors(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for p in folders:  # deepest first; stops at the first that is not empty
        try:
            p.rmdir()
        except OSError:
            return


def _remove_stale_temporaries(dest: Path) -> list[str]:
    """Remove what a killed writer of ``dest`` left beside it: the temporary folders that
    ``atomic_dir`` and the planner name ``.NAME.XXXXXXXX[.tmp[.old]]``. Called only by the
    holder of ``dest``'s exclusive lock, so no live writer of ``dest`` owns them."""
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.[A-Za-z0-9_]{{8}}(\.tmp(\.old)?)?$")
    removed = []
    if dest.parent.is_dir():
        for entry in dest.parent.iterdir():
            if entry.is_dir() and not entry.is_symlink() and pattern.match(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
                removed.append(entry.name)
    return removed


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _apply_umask(root: Path) -> None:
    """mkdtemp and some writers create private (0700/0600) entries; give them normal modes."""
    umask = _umask()
    for path in [root, *root.rglob("*")]:
        os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file through a temporary sibling and a rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_regular(file: str | Path, limit: int, what: str, error: type[ShaperError],
                 missing: str | None = None) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, or one ``error`` line.

    FIFOs, devices and sockets are refused before they are opened (reading one would block
    or never end), and so is a file larger than ``limit``; ``missing`` replaces the message
    for a file that does not exist.
    """
    file = Path(file)
    try:
        info = file.stat()
    except FileNotFoundError:
        raise error(missing or f"{what} {file} does not exist") from None
    except OSError as exc:
        raise error(f"cannot read {what} {file}: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise error(missing or f"{what} {file} is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{what} {file} is not a regular file (a FIFO, device or socket); "
                    "give a file")
    if info.st_size > limit:
        raise error(f"{what} {file} is {info.st_size:,} bytes; at most {limit:,} are read")
    try:
        with open(file, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise error(f"cannot read {what} {file}: {exc.strerror or exc}") from None
    if len(data) > limit:  # grew while read
        raise error(f"{what} {file} is over {limit:,} bytes; at most {limit:,} are read")
    return data


def read_lines(file: str | Path, limit: int, what: str, error: type[ShaperError], *,
               lossy: bool = False, empty_ok: bool = False) -> list[str]:
    """The non-empty lines of a UTF-8 text file (a byte-order mark dropped), each stripped: one
    text per line, as calibration, request and training files are written.

    ``lossy`` replaces undecodable bytes (a large training corpus) where the default refuses the
    file in one ``error`` line; ``empty_ok`` returns [] for a file with no text.
    """
    raw = read_regular(file, limit, what, error)
    try:
        text = raw.decode("utf-8-sig", errors="replace" if lossy else "strict")
    except UnicodeDecodeError as exc:
        raise error(f"{what} {file} is not UTF-8 text (byte {exc.start}); give one text per "
                    "line, UTF-8") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines and not empty_ok:
        raise error(f"{what} {file} has no text; give one text per line")
    return lines


def read_manifest(file: Path, fmt: str, max_version: int, what: str,
                  error: type[ShaperError], missing: str) -> dict:
    """A self-describing artifact's JSON header, its format and version checked.

    ``missing`` is the message when the file is absent (say how to make one).
    """
    from .schema import MAX_JSON_BYTES, parse_json

    data = parse_json(read_regular(file, MAX_JSON_BYTES, what, error, missing), str(file), error)
    if not isinstance(data, dict) or data.get("format") != fmt:
        raise error(f"{file} is not a shaper-deploy {what}")
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version > max_version:
        raise error(f"{what} {file.parent} has format version {version!r}, newer than this "
                    f"shaper-deploy reads ({max_version}); upgrade shaper-deploy")
    return data


def _cannot_open(path: Path) -> str | None:
    """Why ``path`` cannot be opened for writing (created if absent), or None if it can."""
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o644))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


@contextlib.contextmanager
def output_lock(dest: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on writing ``dest`` for the whole block, or fail at once.

    The lock is a hidden file beside ``dest`` (``.NAME.lock``, removed at the end), taken with
    ``filelock``, so a second writer of the same output stops with one line instead of
    racing the first.
    """
    from filelock import FileLock, Timeout

    dest = Path(dest)
    check_output_dir(dest, force=True)
    path = dest.parent / f".{dest.name}.lock"
    created = _missing_ancestors(dest.parent)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), timeout=0)
        lock.acquire()
    except Timeout:
        # filelock also times out when the lock file cannot be opened at all (a folder that
        # takes no new files, such as /proc): say that, not that another process holds it
        cause = _cannot_open(path)
        _remove_empty(created)
        if cause is not None:
            raise OutputError(f"cannot lock {dest}: cannot create {path.name} in "
                              f"{dest.parent} ({cause}); choose an output in a writable "
                              "folder") from None
        raise OutputError(f"{dest} is being written by another shaperctl process; wait for it "
                          "to finish or choose another output") from None
    except OSError as exc:
        _remove_empty(created)
        raise OutputError(f"cannot lock {dest}: {exc.strerror or exc}") from None
    try:
        _remove_stale_temporaries(dest)
        yield
    finally:
        # Removed while still held, then released: a process that opened the old file and
        # locks it after this release finds its name gone (filelock checks st_nlink after
        # every flock and starts over), so it can never hold the lock beside a newcomer on a
        # new file. Releasing first and removing after would open exactly that race.
        with contextlib.suppress(OSError):
            path.unlink()
        lock.release()
        if not dest.exists():
            _remove_empty(created)
