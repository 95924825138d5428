"""Where the agent's ``files`` installer put a bundle, for programs that load it.

The installer keeps ``<target>/<bundle name>/releases/<version>/<payload>`` and a
symbolic link ``<target>/<bundle name>/current`` to the committed release,
replaced by an atomic rename (README, "Updates on the device"). A program reads
the link, loads from the release directory, and reads the link again now and
then to notice a rollout (or a revert, or a rollback).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

__all__ = ["Release", "current_release"]


@dataclass(frozen=True)
class Release:
    """One installed release of a bundle."""

    #: The bundle's name (the directory under the installer's target).
    name: str
    #: Its version, as the release directory is named (semantic version).
    version: str
    #: The release directory, holding the bundle's payloads by name.
    path: Path


def current_release(target: Union[str, "os.PathLike[str]"], name: str) -> Optional[Release]:
    """The release ``<target>/<name>/current`` points to, or ``None`` before the
    first install. ``target`` is the installer's ``target`` in agent.toml."""
    link = Path(target) / name / "current"
    try:
        pointed = os.readlink(link)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == 22:  # EINVAL: a plain directory, not a link; use it as it is
            return Release(name=name, version=link.resolve().name, path=link)
        raise
    path = (link.parent / pointed).resolve()
    return Release(name=name, version=path.name, path=path)
