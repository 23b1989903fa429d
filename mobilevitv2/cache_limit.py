"""The caches' size limit: each cache folder (one per export format, one for compiled CPU graphs) is kept
under ``$MOBILEVITV2_CACHE_LIMIT_GB`` gigabytes (default 2), the entries used longest ago removed first.

Every new weight file, input size and upgrade of this package or of torch writes new entries (an export
or a compiled package is 10-40 MB for width 1.0), and nothing else ever removes the old ones, so without
a limit a cache used for fine-tuning or many checkpoints only grows. An entry's modification time is set
when it is used (:func:`mark_used`), so "used longest ago" is the oldest time; after a new entry is
written the folder is pruned (:func:`prune`), never removing that entry, whatever its size. Only this
package's own entries are counted and removed: the compiled packages (``*.pt2``) and the export folders
(those holding a ``key.json``); temporary ``.partial-*`` files and anything else in the folder are left
alone, so a cache folder chosen by hand never loses a file this package did not write.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LIMIT_ENV = "MOBILEVITV2_CACHE_LIMIT_GB"
DEFAULT_LIMIT_GB = 2.0


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
    if path.name.startswith("."):
        return False
    if path.is_file():
        return path.suffix == ".pt2"
    return path.is_dir() and (path / "key.json").is_file()


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


def prune(folder: str | os.PathLike, keep: str | os.PathLike | None = None, limit: float | None = None) -> list[Path]:
    """Remove this package's entries from ``folder``, used longest ago first, until they take at most
    ``limit`` bytes (default :func:`limit_bytes`; 0 removes them all); ``keep`` (the entry just written) is
    never removed. Returns what went. An entry another process removes or uses meanwhile is passed over."""
    limit = limit_bytes() if limit is None else limit
    kept = Path(keep).resolve() if keep is not None else None
    found = entries(folder)
    total = sum(size for _, size, _ in found)
    removed = []
    for _, size, path in sorted(found, key=lambda entry: entry[0]):
        if total <= limit:
            break
        if path.resolve() == kept:
            continue
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        total -= size
        removed.append(path)
    return removed
