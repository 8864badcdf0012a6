"""Videos: one reader over small backend objects (decord, PyAV), frames as a player shows them.

A backend gives coded frames, its count, rate and timestamps; :class:`VideoReader` checks indices,
applies the container's orientation (rotation, flips) once for every backend, and puts frames in
the order asked for. ``backend="auto"`` tries :data:`AUTO_ORDER` and takes the first backend
that opens the file and decodes its first frame.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterable

import numpy as np

from src.errors import ConfigError, InputError
import src.media.decord_backend as decord_backend
from src.media.orientation import IDENTITY, Orientation
from src.media.pyav_backend import PyAVBackend, probe_display_matrix

logger = logging.getLogger(__name__)

VIDEO_BACKENDS = ("auto", "decord", "pyav")
# PyAV first: as fast as decord in windows read in order (bench/decode.py), its memory stays flat
# where decord's grows with what was read (2.5 GB after 32 s of 1080p), and it reads AV1, which
# decord 0.6 does not. decord where PyAV cannot open a file.
_NAMES = {"pyav": "PyAV", "decord": "decord"}
AUTO_ORDER = ("pyav", "decord")


def open_backend(path: Path, name: str):
    """The backend object `name` ("decord" or "pyav") over `path`; InputError if it cannot read it."""
    if name == "pyav":
        return PyAVBackend(path)
    if name == "decord":
        if decord_backend.import_decord() is None:
            raise InputError(f"{path}: cannot read video (decord is not installed)")
        return decord_backend.DecordBackend(path, probe_display_matrix(path))
    raise ConfigError(f"{path}: unknown video backend {name!r} (use {VIDEO_BACKENDS})")


class VideoReader:
    """Random access to the frames of a video as ``[T, H, W, 3]`` uint8 RGB, turned as displayed.

    Reading in order is cheapest (PyAV continues one decoder pass); any order and repeats work.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto"):
        if backend not in VIDEO_BACKENDS:
            raise ConfigError(f"{path}: unknown video backend {backend!r} (use {VIDEO_BACKENDS})")
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: cannot read video (file does not exist)")
        if self.path.stat().st_size == 0:
            raise InputError(f"{self.path}: cannot read video (empty file)")
        self._impl = self._open(backend)
        matrix = self._impl.display_matrix
        self.orientation: Orientation = IDENTITY if matrix is None else Orientation.from_display_matrix(matrix)

    def _open(self, backend: str):
        if backend != "auto":
            return open_backend(self.path, backend)
        names = [n for n in AUTO_ORDER if n != "decord" or decord_backend.import_decord() is not None]
        for name, next_name in zip(names, names[1:]):
            try:
                return open_backend(self.path, name)
            except InputError as exc:  # one decoder refuses some files another still reads
                logger.warning("%s; trying %s", exc, _NAMES[next_name])
        return open_backend(self.path, names[-1])

    # -- properties
    @property
    def backend(self) -> str:
        return self._impl.name

    @property
    def num_frames(self) -> int:
        return self._impl.num_frames

    @property
    def fps(self) -> float:
        return self._impl.fps

    @property
    def coded_hw(self) -> tuple[int, int]:
        """(height, width) of the frames as stored, before the display orientation."""
        return self._impl.coded_hw

    @property
    def height(self) -> int:
        return self.orientation.displayed_hw(self.coded_hw)[0]

    @property
    def width(self) -> int:
        return self.orientation.displayed_hw(self.coded_hw)[1]

    @property
    def decoded_frames(self) -> int:
        """Frames the decoder produced so far (what reading has cost)."""
        return self._impl.decoded_frames

    def metadata(self) -> dict:
        """What a window records about how its frames were read."""
        return {"video_backend": self.backend, **self.orientation.metadata(self.coded_hw)}

    # -- reading
    def _check_indices(self, indices: Iterable[int]) -> list[int]:
        checked = [int(i) for i in indices]
        for i in checked:
            if not 0 <= i < self.num_frames:
                raise ValueError(f"{self.path}: frame index {i} out of range (video has {self.num_frames} frames)")
        return checked

    def get_frames(self, indices: Iterable[int]) -> np.ndarray:
        """Frames at ``indices`` (any order, repeats allowed) as ``[T, H, W, 3]`` uint8, as displayed."""
        wanted = self._check_indices(indices)
        if not wanted:
            return np.zeros((0, self.height, self.width, 3), dtype=np.uint8)
        if self._impl is None:
            raise InputError(f"{self.path}: cannot read video (reader is closed)")
        unique = sorted(set(wanted))
        frames = self.orientation.apply(self._impl.read(unique))  # [U, H, W, 3]
        if unique != wanted:
            lookup = {index: k for k, index in enumerate(unique)}
            frames = frames[[lookup[i] for i in wanted]]
        return np.ascontiguousarray(frames, dtype=np.uint8)

    def timestamps(self, indices: Iterable[int]) -> list[float]:
        """Presentation time in seconds of each frame, relative to the stream start."""
        wanted = self._check_indices(indices)
        if not wanted:
            return []
        found = self._impl.timestamps(wanted) if self._impl is not None else None
        return found if found is not None else [i / self.fps for i in wanted]

    # -- lifetime
    def close(self) -> None:
        """Release the decoder and its file."""
        if self._impl is not None:
            self._impl.close()

    def __enter__(self) -> "VideoReader":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __len__(self) -> int:
        return self.num_frames

    def __repr__(self) -> str:
        return (f"VideoReader({str(self.path)!r}, backend={self.backend!r}, "
                f"num_frames={self.num_frames}, fps={self.fps:.3f})")
