"""The source-kind protocol and its registry (see stages/sources/__init__.py)."""
from __future__ import annotations

from typing import ClassVar

import numpy as np

from pipeline.runtime.config import PipelineConfig, SourceConfig
from pipeline.runtime.stage import StageFatalError

_KINDS: list[type["SourceKind"]] = []


class SourceError(StageFatalError):
    """A source that cannot be opened or read (one line): the capture exits 3, not worth a restart."""


class SourceKind:
    """One way of reading frames. Subclasses set ``name`` (registering them) and override the rest."""

    name: ClassVar[str] = ""
    priority: ClassVar[int] = 0  # kinds are asked in descending priority; the catch-all goes last
    finite: ClassVar[bool] = True  # a file or folder that ends; False: a camera that may drop and return
    local: ClassVar[bool] = True  # the URI is a path, resolved against the config file's folder
    stated_count: ClassVar[bool] = False  # frame_count is what a container states: reading fewer is a fault

    fps: float = 0.0
    frame_count: int = 0  # frames it holds (0: unknown or endless)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name:
            _KINDS.append(cls)
            _KINDS.sort(key=lambda kind: -kind.priority)

    @classmethod
    def matches(cls, uri: str, location: str) -> bool:
        """Whether this kind reads ``uri`` (``location``: the URI resolved as a path where it is one)."""
        raise NotImplementedError

    @classmethod
    def validate(cls, src: SourceConfig, where: str, cfg: PipelineConfig, check_files: bool) -> None:
        """Refuse a URI this kind could never open, at load (ConfigError naming ``where``)."""

    def __init__(self, src: SourceConfig, location: str):
        self.src, self.location = src, location

    def read(self) -> tuple[np.ndarray | None, float]:
        """(BGR frame, its source time in seconds from the start of this reader), or (None, 0.0) at the
        end of a finite source or on a camera's read failure or timeout."""
        raise NotImplementedError

    def release(self) -> None:
        pass


def kind_for(uri: str, location: str) -> type[SourceKind]:
    for kind in _KINDS:
        if kind.matches(uri, location):
            return kind
    raise SourceError(f"no source kind reads {uri!r}")
