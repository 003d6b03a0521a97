"""Mask PNGs of Open Images, in folders or in the zip files Open Images ships them in.

    store = MaskStore(["masks/validation-masks-0.zip", "masks/more_masks/"])
    listing = store.list()                 # name -> (container, member), counts per container
    data = store.read(*listing.members["000a1249af2bc5f0_m0k4j_1c6b8d2e.png"])

A segmentation row names its file by ``MaskPath``, a bare file name; a container holds it at any
depth (a zip member ``masks/x.png`` answers for ``x.png``). When two containers hold one name the
first given wins and the other copies are counted as shadowed. Zip files are opened once per
process and kept open (`MaskStore` is picklable: the open files are not part of its state), so a
worker reads each mask with one seek. Paths go through Beam's FileSystems (gs://, s3://).
"""

from __future__ import annotations

import os
import posixpath
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from apache_beam.io.filesystems import FileSystems

from pipelines.io import join, open_raw, read_bytes

__all__ = ["MaskListing", "MaskStore", "is_zip"]

MASK_EXTENSION = ".png"


def is_zip(path: str) -> bool:
    return path.lower().endswith(".zip")


@dataclass(frozen=True)
class MaskListing:
    """What the containers hold: each mask name's (container index, member), the number of
    .png entries per container, and how many entries a container before it already named."""

    members: dict[str, tuple[int, str]]
    files_per_container: tuple[int, ...]
    shadowed: int

    @property
    def total(self) -> int:
        return sum(self.files_per_container)


def _folder_files(folder: str) -> list[str]:
    """Paths (relative to ``folder``) of every .png below it, sorted."""
    if FileSystems.get_scheme(folder) is None:
        found = []
        for dirpath, _, names in os.walk(folder):
            rel = os.path.relpath(dirpath, folder)
            for name in names:
                if name.lower().endswith(MASK_EXTENSION):
                    found.append(name if rel == "." else posixpath.join(rel, name))
        return sorted(found)
    prefix = folder.rstrip("/") + "/"
    matched = FileSystems.match([prefix + "**"])[0].metadata_list
    return sorted(m.path[len(prefix) :] for m in matched if m.path.lower().endswith(MASK_EXTENSION))


@dataclass
class MaskStore:
    """Read access to mask files in ``containers`` (folders and .zip files)."""

    containers: Sequence[str]
    _zips: dict[int, tuple[Any, zipfile.ZipFile]] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.containers = tuple(self.containers)

    def __getstate__(self) -> dict[str, Any]:
        return {"containers": self.containers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.containers = tuple(state["containers"])
        self._zips = {}

    def check(self) -> None:
        """FileNotFoundError naming a container that does not exist (before any work)."""
        for path in self.containers:
            if not FileSystems.exists(path):
                raise FileNotFoundError(f"--mask-dir {path!r}: no such folder or zip file")
            if is_zip(path):
                with open_raw(path) as f:
                    if not zipfile.is_zipfile(f):
                        raise FileNotFoundError(f"--mask-dir {path!r} is not a zip file")

    def _zip(self, index: int) -> zipfile.ZipFile:
        if index not in self._zips:
            raw = open_raw(self.containers[index])
            self._zips[index] = (raw, zipfile.ZipFile(raw))
        return self._zips[index][1]

    def list(self) -> MaskListing:
        """Every .png of every container (zip central directories, folder listings)."""
        members: dict[str, tuple[int, str]] = {}
        counts, shadowed = [], 0
        for index, path in enumerate(self.containers):
            if is_zip(path):
                names = sorted(
                    i.filename
                    for i in self._zip(index).infolist()
                    if not i.is_dir() and i.filename.lower().endswith(MASK_EXTENSION)
                )
            else:
                names = _folder_files(path)
            counts.append(len(names))
            for member in names:
                name = posixpath.basename(member)
                if name in members:
                    shadowed += 1
                else:
                    members[name] = (index, member)
        return MaskListing(members, tuple(counts), shadowed)

    def read(self, index: int, member: str) -> bytes:
        """The bytes of ``member`` of container ``index``."""
        path = self.containers[index]
        if is_zip(path):
            return self._zip(index).read(member)
        return read_bytes(join(path, member))

    def close(self) -> None:
        for raw, archive in self._zips.values():
            archive.close()
            raw.close()
        self._zips.clear()
