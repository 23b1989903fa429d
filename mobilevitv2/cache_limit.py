"""The caches' size limit: each cache folder (one per export format, one for compiled CPU graphs) is kept
under ``$MOBILEVITV2_CACHE_LIMIT_GB`` gigabytes (default 2), the entries used longest ago removed first.

Every new weight file, input size and upgrade of this package or of torch writes new entries (an export
or a compiled package is 10-40 MB for width 1.0), and nothing else ever removes the old ones, so without
a limit a cache used for fine-tuning or many checkpoints only grows. An entry's modification time is set
when it is used (:func:`mark_used`), so "used longest ago" is the oldest time; after a new entry is
written the folder is pruned (:func:`prune`), never removing that entry, whatever its size.

Several processes may share a cache: one may have just written an entry, or found one and be about to
open it, while another prunes. So an entry used or written in the last :data:`RECENTLY_USED_SECONDS` is
never pruned (the folder may then stay over the limit for that long), and an entry's time is read again
just before it is removed. Only this package's own entries are counted and removed, recognised by the
names it gives them: compiled packages ``<graph>-<shape>-<32 hex digits>.pt2`` and export folders
``<class>-<height>x<width>-<compression>-<24 hex digits>`` holding the ``key.json`` it writes; temporary
``.partial-*`` files and anything else are left alone, so a cache folder chosen by hand never loses a
file this package did not write.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

LIMIT_ENV = "MOBILEVITV2_CACHE_LIMIT_GB"
DEFAULT_LIMIT_GB = 2.0
# Longer than any gap between a process finding (or writing) an entry and opening it.
RECENTLY_USED_SECONDS = 600.0

_PACKAGE_NAME = re.compile(r"[A-Za-z0-9_]+-[0-9]+(x[0-9]+)*-[0-9a-f]{32}\.pt2")
_EXPORT_NAME = re.compile(r"[A-Za-z0-9_]+-[0-9]+x[0-9]+-[a-z0-9]+-[0-9a-f]{24}")


def limit_bytes() -> float:
    """The limit per cache folder in bytes, from ``$MOBILEVITV2_CACHE_LIMIT_GB`` (a positive number; ``inf``
    for none), else :data:`DEFAULT_LIMIT_GB`."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT_GB * 1e9
    try:
        gigabytes = float(text)
    except ValueError:
        gigabytes = float("nan")
    if not gigabytes > 0:  # NaN included
        raise ValueError(f"${LIMIT_ENV} must be a positive number of gigabytes (or inf), got {text!r}")
    return gigabytes * 1e9


def mark_used(entry: str | os.PathLike) -> None:
    """Set ``entry``'s modification time to now, so that pruning keeps it over entries used longer ago (a
    read-only cache is left as it is)."""
    try:
        os.utime(entry)
    except OSError:
        pass


def _is_entry(path: Path) -> bool:
    """Whether ``path`` is a compiled package or an export folder this package wrote (by its name, and for
    an export folder the key file in it)."""
    if path.is_file():
        return _PACKAGE_NAME.fullmatch(path.name) is not None
    if not path.is_dir() or _EXPORT_NAME.fullmatch(path.name) is None:
        return False
    try:
        with open(path / "key.json", encoding="utf-8") as f:
            key = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(key, dict) and isinstance(key.get("sha256"), str) and path.name.endswith(key["sha256"][:24])


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def entries(folder: str | os.PathLike) -> list[tuple[float, int, Path]]:
    """This package's entries in ``folder`` as (modification time, bytes, path), in no order; none for a
    folder that does not exist. An entry removed meanwhile is passed over."""
    try:
        children = list(Path(folder).iterdir())
    except OSError:
        return []
    found = []
    for path in children:
        try:
            if _is_entry(path):
                found.append((path.stat().st_mtime, _size(path), path))
        except OSError:
            continue
    return found


def _remove(path: Path) -> bool:
    try:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    except OSError:
        return False
    return True


def prune(
    folder: str | os.PathLike,
    keep: str | os.PathLike,
    limit: float | None = None,
    now: float | None = None,
) -> list[Path]:
    """Remove this package's entries from ``folder``, used longest ago first, until they take at most
    ``limit`` bytes (default :func:`limit_bytes`). Never removed: ``keep`` (the entry just written), entries
    used or written in the last :data:`RECENTLY_USED_SECONDS` before ``now``, and an entry whose time
    changed since the folder was read (used meanwhile). Returns what went."""
    limit = limit_bytes() if limit is None else limit
    now = time.time() if now is None else now
    kept = Path(keep).resolve()
    found = entries(folder)
    total = sum(size for _, size, _ in found)
    removed = []
    for mtime, size, path in sorted(found, key=lambda entry: entry[0]):
        if total <= limit or now - mtime < RECENTLY_USED_SECONDS:
            break  # the rest are newer still
        if path.resolve() == kept:
            continue
        try:
            if path.stat().st_mtime != mtime:
                continue
        except OSError:  # removed meanwhile
            total -= size
            continue
        if _remove(path):
            total -= size
            removed.append(path)
    return removed


def clear(folder: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Remove every entry of this package from ``folder``, whatever its time; (removed, could not be
    removed)."""
    removed, failed = [], []
    for _, _, path in entries(folder):
        (removed if _remove(path) else failed).append(path)
    return removed, failed
