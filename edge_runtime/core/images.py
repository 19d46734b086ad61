"""Which files are images: the one folder walk behind classify, evaluate, calibration and the
benchmark (capture's folder source takes IMAGE_SUFFIXES from here; its walk is still its own).

The rules, stated once:
- an image is a file whose suffix (any case) is in IMAGE_SUFFIXES;
- folders are walked recursively, in path order, following symbolic links (each real folder
  once, so a link back up the tree ends);
- hidden files and folders (names starting with ".") are images and folders like any other:
  a stray ".DS_1234.jpg" or "._cell.jpg" is decoded and, when it is not an image, reported as
  unreadable (calibration and the benchmark leave such files out and list them). Skipping it
  would hide a file from a count without saying so.
- what cannot be read is never skipped in silence: a folder that cannot be listed or entered,
  and an image name that is not a regular file (a broken link, a named pipe, a device), each
  come back as (path, reason) beside the images.
"""

from __future__ import annotations

import glob
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .preprocess import NOT_REGULAR, os_reason

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_name(name) -> bool:
    return os.path.splitext(str(name))[1].lower() in IMAGE_SUFFIXES


def printable(path) -> str:
    """A path as text any output can take: bytes of a non-UTF-8 file name (legal on Linux, held
    by Python as lone surrogates) become backslash escapes such as \\xff instead of an error."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


@dataclass
class Listing:
    files: list[Path] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (path, one-line reason)


def _sort_key(p) -> tuple[str, ...]:
    # Component by component, as sorted(Path) did: "a/b" before "a b/c".
    return Path(p).parts


def _not_a_file(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError as e:
        return os_reason(e, path)
    return NOT_REGULAR.get(stat.S_IFMT(st.st_mode), "not a regular file")


def _walk(folder: str, out: Listing, seen: set) -> None:
    try:
        st = os.stat(folder)
    except OSError as e:
        out.errors.append((folder, os_reason(e, folder)))
        return
    if (st.st_dev, st.st_ino) in seen:
        return
    seen.add((st.st_dev, st.st_ino))
    # Without execute permission the names can be listed but no file in the folder opened.
    if not os.access(folder, os.R_OK | os.X_OK):
        out.errors.append((folder, "permission denied (folder not read)"))
        return
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        out.errors.append((folder, f"{os_reason(e, folder)} (folder not read)"))
        return
    for entry in entries:
        try:
            if entry.is_dir():  # follows a link to a folder
                _walk(entry.path, out, seen)
            elif is_image_name(entry.name):
                if entry.is_file():
                    out.files.append(Path(entry.path))
                else:
                    out.errors.append((entry.path, _not_a_file(entry.path)))
        except OSError as e:  # a link whose target cannot be looked at
            out.errors.append((entry.path, os_reason(e, entry.path)))


def list_images(folder) -> Listing:
    """Every image under `folder` (see the module's rules), sorted by path, and what could not
    be read. A folder that cannot be listed at all gives no files and one error."""
    out = Listing()
    _walk(str(folder), out, set())
    out.files.sort(key=_sort_key)
    out.errors.sort(key=lambda e: _sort_key(e[0]))
    return out


@dataclass
class ClassListing:
    files: dict[str, list[Path]] = field(default_factory=dict)  # label -> images, folders in name order
    unknown: list[str] = field(default_factory=list)  # sub-folders not named as a label
    errors: list[tuple[str, str]] = field(default_factory=list)

    def items(self) -> list[tuple[Path, str]]:
        return [(p, lab) for lab, paths in self.files.items() for p in paths]


def list_class_images(root, labels) -> ClassListing:
    """root/<label>/... (one sub-folder per class): the images of each folder named as a label,
    the other folders' names, and what could not be read. evaluate, calibration and the
    benchmark all read a class-folder tree through this."""
    root = str(root)
    out = ClassListing()
    try:
        with os.scandir(root) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError as e:
        out.errors.append((root, f"{os_reason(e, root)} (folder not read)"))
        return out
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError as e:
            out.errors.append((entry.path, os_reason(e, entry.path)))
            continue
        if not is_dir:
            continue
        if entry.name not in labels:
            out.unknown.append(entry.name)
            continue
        listing = list_images(entry.path)
        out.files[entry.name] = listing.files
        out.errors.extend(listing.errors)
    return out


def expand_inputs(paths) -> list[tuple[str, str | None]]:
    """Files, folders (recursive, image suffixes) and globs -> [(path, error or None)], in order.

    A named file is passed on whatever it is (opening it says what is wrong); a folder gives its
    images and its unreadable parts; an argument that cannot even be looked at gives an error.
    """
    out, seen = [], set()

    def add(p, err=None):
        key = str(p)
        if err is not None or key not in seen:
            seen.add(key)
            out.append((key, err))

    def add_folder(d, empty_error=None):
        listing = list_images(d)
        if not listing.files and not listing.errors and empty_error:
            add(d, empty_error)
        for f in listing.files:
            add(f)
        for p, reason in listing.errors:
            add(p, reason)

    for raw in paths:
        try:
            st = os.stat(raw)
        except FileNotFoundError:
            st = None
        except OSError as e:  # a name too long, a folder on the way that may not be entered
            add(raw, os_reason(e, raw))
            continue
        if st is not None and stat.S_ISDIR(st.st_mode):
            add_folder(raw, "folder holds no images")
        elif st is not None or os.path.islink(raw):
            add(raw)
        elif glob.has_magic(raw):
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                add(raw, "no file matches this pattern")
            for m in matches:
                if os.path.isdir(m):
                    add_folder(m)
                else:
                    add(m)
        else:
            add(raw, "no such file or folder")
    return out
