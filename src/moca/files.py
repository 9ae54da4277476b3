"""Writing files the way a user expects: whole or not at all, with the user's umask.

``tempfile.mkstemp`` / ``mkdtemp`` create their files and folders private (0600 / 0700)
whatever the umask says; a scenario or checkpoint renamed into place from there would
stay private. Everything moca writes goes through here instead, so files get 0666 and
folders 0777, minus the umask, as ``open()`` and ``mkdir`` would have given them. And
the one wording of a file that does not parse, whichever reader finds it
(:func:`parse_problem`), a key given twice refused by every JSON reader
(:func:`unique_keys`), whole numbers too long for Python's ``int`` read as floats
(:func:`whole_number`), and the mark moca leaves in the figures it draws
(:func:`figure_metadata`, :func:`drawn_by_moca`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable


class OutputError(ValueError):
    """An output path that cannot be written (its folder is missing, or it is a folder)."""


def umask() -> int:
    """The process's umask (read by setting and restoring it: POSIX has no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    return 0o666 & ~umask()


def folder_mode() -> int:
    return 0o777 & ~umask()


def output_target(path: str | Path) -> tuple[Path, bool]:
    """Where an output named ``path`` is written, and whether as a stream: a symbolic
    link's target (the link stays a link; a rename over it had replaced the link with a
    file and left its target as it was), a device or a FIFO as they are (a rename over
    ``/dev/null`` or ``/dev/stdout`` replaced them with a file), else ``path`` itself."""
    path = Path(path)
    try:
        kind = path.stat().st_mode  # (through links)
    except OSError:  # (not there yet, or a link to what is not there yet)
        kind = None
    if kind is not None and (own_descriptor(path) is not None or not (stat.S_ISREG(kind) or stat.S_ISDIR(kind))):
        # opened by the name given: /dev/stdout on a pipe is a link to "pipe:[N]", a name
        # that resolves to nothing (realpath of it was taken for a new file in /proc/PID/fd)
        return path, True
    if path.is_symlink():
        path = Path(os.path.realpath(path))
    return path, False


def own_descriptor(path: str | Path) -> int | None:
    """1 or 2 when ``path`` is this process's standard output or error (``/dev/stdout``,
    ``/dev/fd/2``, ...), whatever it is redirected to; else None. Such an output is written
    through the descriptor: renamed over, a redirected file lost what the command printed
    after it, and reopened, it was written over from its start."""
    try:
        target = os.stat(path)
    except OSError:
        return None
    for descriptor in (1, 2):
        try:
            own = os.fstat(descriptor)
        except OSError:
            continue
        if (target.st_dev, target.st_ino) == (own.st_dev, own.st_ino):
            return descriptor
    return None


def check_parent(path: str | Path, option: str = "-o") -> Path:
    """Refuse an output whose folder does not exist (moca never creates it silently), or
    where this user may not write (found before the work, not after it)."""
    path = Path(path)
    target, stream = output_target(path)
    if stream:
        if not os.access(target, os.W_OK):
            raise OutputError(f"{option} {path}: no permission to write to it")
        return path
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        what = "is not a directory" if parent.exists() else "does not exist"
        raise OutputError(f"{option} {path}: directory {parent} {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: no permission to write in {parent}")
    return path


def check_folder(path: str | Path, option: str) -> Path:
    """Refuse a folder moca is to create or fill (a runs or data folder) when it cannot be:
    it, or the nearest of its parents that exists, is a file or not writable. Checked
    before the work, so that minutes of computing are not lost at the end."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "exists and is not a directory" if existing == path else f"{existing} is not a directory"
        raise OutputError(f"{option} {path}: {where}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: no permission to write in {existing}")
    return path


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write via a temporary file in the same folder and rename it into place, so a failure
    never leaves half a file; the file gets the umask's mode. Through a symbolic link to
    its target; to a device or a FIFO directly (:func:`output_target`)."""
    path, stream = output_target(path)
    data = data.encode() if isinstance(data, str) else data
    descriptor = own_descriptor(path) if stream else None
    if descriptor is not None:  # (after what this process printed there, not over it)
        (sys.stdout if descriptor == 1 else sys.stderr).flush()
        write_all(descriptor, data)
        return path
    if stream:  # (a stream has no whole-or-nothing: written as it comes)
        with open(path, "wb") as handle:
            handle.write(data)
        return path
    replace_with(path, lambda name: Path(name).write_bytes(data))
    return path


def replace_with(path: Path, write: Callable[[str], Any], suffix: str = ".tmp") -> None:
    """``write(name)`` fills a temporary file of its own beside ``path`` (named
    ``.NAME.XXXX`` + ``suffix``: a figure's suffix ends in its format), which then gets the
    umask's mode and replaces ``path``; it is removed if anything fails on the way."""
    descriptor, tmp = tempfile.mkstemp(dir=path.parent if str(path.parent) else ".", prefix=f".{path.name}.",
                                       suffix=suffix)
    os.close(descriptor)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_all(descriptor: int, data: bytes) -> None:
    """All of ``data`` to ``descriptor``: ``os.write`` may take only part of it."""
    view = memoryview(data)
    while view:
        view = view[os.write(descriptor, view):]


def exchange_paths(first: str | Path, second: str | Path) -> bool:
    """Swap two existing paths (folders included) in one step, so that neither name is ever
    missing: Linux's ``renameat2(RENAME_EXCHANGE)``. False where it did not happen: another
    system, a file system or sandbox without the call, a name gone (nothing changed on disk,
    and the caller's two renames then say what is wrong, if anything). By hand through ctypes
    because Python's ``os`` does not expose ``renameat2`` and no maintained library does."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError, TypeError):  # (a C library before glibc 2.28)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_current_folder, rename_exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE (linux/fcntl.h, linux/fs.h)
    return renameat2(at_current_folder, os.fsencode(first), at_current_folder, os.fsencode(second),
                     rename_exchange) == 0


def write_stdout(text: str) -> None:
    """``text`` on standard output, whole or with an error: through the descriptor where there
    is one, as ``sys.stdout.write`` unbuffered (``PYTHONUNBUFFERED=1``) dropped the rest of a
    short write to a full disk without a word, leaving a truncated JSON file and exit 0."""
    stream = sys.stdout
    try:
        # (a stream put in its place, a test's or a caller's, is written as a stream: its
        # fileno, if any, need not be where it writes)
        descriptor = stream.fileno() if stream is sys.__stdout__ else None
    except (AttributeError, OSError, ValueError):  # (io.UnsupportedOperation, a closed stream)
        descriptor = None
    if descriptor is None:
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    try:
        write_all(descriptor, text.encode(getattr(stream, "encoding", None) or "utf-8"))
    except OSError as err:
        raise OSError(err.errno, err.strerror, "standard output") from None


def write_folder(folder: str | Path, write: Callable[[Path], Any]) -> Path:
    """A new folder written whole or not at all: ``write(staging)`` fills a hidden staging
    folder beside it, which is renamed into place at the end and removed if ``write`` fails
    or is interrupted (a Ctrl-C while a run's report was written left ``.ID.tmp`` behind)."""
    folder = Path(folder)
    staging = folder.with_name(f".{folder.name}.tmp")
    staging.mkdir(parents=True, exist_ok=False)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    try:
        os.replace(staging, folder)
    except OSError as err:  # (written whole: kept, and said where, rather than deleted)
        raise OutputError(f"{folder}: could not be put in place ({err.strerror or err}); what was written is "
                          f"kept in {staging}") from None
    return folder


def remove_staging(parent: str | Path, name: str | None) -> None:
    """Remove the staging folders :func:`write_folder` left in ``parent`` for a folder
    ``name`` (or ``name-N``) when its process was killed, which runs no cleanup."""
    if name:
        for staging in Path(parent).glob(f".{name}*.tmp"):
            if re.fullmatch(rf"\.{re.escape(name)}(-\d+)?\.tmp", staging.name):
                shutil.rmtree(staging, ignore_errors=True)


def publish_tree(folder: str | Path) -> None:
    """Give a staged folder (``mkdtemp``: 0700) and everything in it the umask's modes."""
    folder = Path(folder)
    files, folders = file_mode(), folder_mode()
    for root, dirs, names in os.walk(folder):
        for name in names:
            os.chmod(Path(root) / name, files)
        for name in dirs:
            os.chmod(Path(root) / name, folders)
    os.chmod(folder, folders)


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook`` refusing a key given twice in one object: the
    parser keeps the last without a word, and a file that says two things (a mandate of
    0.2, then of 0) was read as the second."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"key {key!r} is given twice in one object (which one is meant?)")
        out[key] = value
    return out


#: The most digits a whole number is read with as such: every number of 308 digits or fewer
#: is below the largest float (about 1.8e308), so a field converts it to a float without overflow.
MOST_DIGITS = 308


def whole_number(text: str) -> int | float:
    """A file's whole number (``json.loads``'s ``parse_int``, the YAML loader's integers): one
    longer than :data:`MOST_DIGITS` digits is read as a float (inf beyond 1.8e308), so the
    field that holds it refuses it by name, where Python's ``int`` refused the whole file
    for its length (over 4,300 digits), with advice about ``sys.set_int_max_str_digits``."""
    if len(text.lstrip("+-")) > MOST_DIGITS:
        return float(text)
    return int(text)


def parse_problem(err: Exception) -> str:
    """A JSON or YAML parser's complaint in one line, with where it found it (1-based line
    and column, as an editor counts), e.g. ``expected ',' or ']', but got '<stream end>' at
    line 2 column 1``."""
    if isinstance(err, json.JSONDecodeError):
        return f"{err.msg} at line {err.lineno} column {err.colno}"
    problem = getattr(err, "problem", None) or getattr(err, "context", None)  # yaml.MarkedYAMLError
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1} column {mark.column + 1}"
    return (str(err).splitlines() or [type(err).__name__])[0]


#: Where a figure of each format carries its maker's name (the metadata matplotlib writes:
#: PNG's ``Software`` text chunk, right after the header; PDF's ``/Creator`` in the
#: document information near the end; SVG's ``dc:creator`` near the top), and moca's name
#: there. ``--plot`` replaces a file only where it finds that mark: an image's first bytes
#: say its format, not who drew it, and a user's own ``report.png`` was replaced.
_FIGURE_MARKS = {".png": (b"\x89PNG\r\n\x1a\n", re.compile(rb"tEXtSoftware\x00moca ")),
                 ".pdf": (b"%PDF-", re.compile(rb"/Creator \(moca ")),
                 ".svg": (b"<", re.compile(rb"<dc:creator>\s*<cc:Agent>\s*<dc:title>moca "))}
#: How far from either end of a figure the mark is looked for (bytes): PNG and SVG put it
#: within a few hundred bytes of the start; a PDF puts it before its cross-reference table,
#: 20 bytes per object (a sweep's figure: 1.5 kB from the end), and a figure can be megabytes.
_MARK_REACH = 1 << 20


def figure_metadata(path: str | Path) -> dict[str, str]:
    """``savefig``'s ``metadata`` for a figure moca draws at ``path`` (by its suffix): its
    maker named as moca, the mark :func:`drawn_by_moca` finds; no metadata for a format
    without a mark (matplotlib refuses unknown keys there)."""
    from moca import __version__

    suffix = Path(path).suffix.lower()
    if suffix not in _FIGURE_MARKS:
        return {}
    return {"Software" if suffix == ".png" else "Creator": f"moca {__version__}"}


def drawn_by_moca(path: str | Path) -> bool:
    """Whether the file at ``path`` is a figure moca drew, in the format its suffix names
    (its first bytes that format's, moca's mark in its metadata); reads at most twice
    :data:`_MARK_REACH` bytes."""
    suffix = Path(path).suffix.lower()
    if suffix not in _FIGURE_MARKS:
        return False
    signature, mark = _FIGURE_MARKS[suffix]
    with open(path, "rb") as file:
        head = file.read(_MARK_REACH)
        size = os.fstat(file.fileno()).st_size
        if size <= 2 * _MARK_REACH:
            parts = [head + file.read()]
        else:
            file.seek(size - _MARK_REACH)
            parts = [head, file.read()]
    if not parts[0].lstrip().startswith(signature):
        return False
    return any(mark.search(part) for part in parts)
