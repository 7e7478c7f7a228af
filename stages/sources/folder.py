"""A folder of images, read in name order as a stream at a nominal frame rate."""
from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from pipeline.runtime.config import SourceConfig
from stages.sources.base import SourceError, SourceKind

log = logging.getLogger("stages.sources.folder")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


class ImageFolder(SourceKind):
    name = "folder"

    @classmethod
    def matches(cls, uri: str, location: str) -> bool:
        return Path(location).is_dir()

    def __init__(self, src: SourceConfig, location: str):
        super().__init__(src, location)
        folder = Path(location)
        self.paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.paths:
            raise SourceError(f"image folder {folder} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        self.fps, self.index = src.fps, 0
        self.frame_count = len(self.paths)

    def read(self) -> tuple[np.ndarray | None, float]:
        while self.index < len(self.paths):
            path = self.paths[self.index]
            self.index += 1
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is not None:
                return image, (self.index - 1) / self.fps
            log.warning("skipping unreadable image %s", path)
        return None, 0.0
