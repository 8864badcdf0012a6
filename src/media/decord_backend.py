"""decord video backend: random access through decord's own index (x86-64 wheels only).

decord turns frames by the display matrix's rotation angle but ignores flips (it reads a
mirror as a 180° turn). It is handed back the coded frames here (its turn undone) so that every
backend applies one orientation, the container's, the same way.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from src.errors import InputError
from src.media.orientation import display_rotation_degrees
from src.media.pyav_backend import short_message

logger = logging.getLogger(__name__)


def import_decord():
    try:
        import decord
    except ImportError:
        return None
    return decord


class DecordBackend:
    """Frames of one video through decord; `display_matrix` as read by PyAV (decord does not give it)."""

    name = "decord"

    def __init__(self, path: str | os.PathLike, display_matrix: np.ndarray | None = None):
        self.path = Path(path)
        decord = import_decord()
        if decord is None:
            raise InputError(f"{self.path}: cannot read video (decord is not installed)")
        self.display_matrix = display_matrix
        # decord's own quarter turns, undone on every read
        angle = display_rotation_degrees(display_matrix) if display_matrix is not None else 0.0
        self._turns = round(angle / 90) % 4
        try:
            reader = decord.VideoReader(str(self.path), ctx=decord.cpu(0))
            num_frames = len(reader)
            fps = float(reader.get_avg_fps())
            # Decode frame 0 now: decord 0.6 opens videos narrower than 64 px but fails on every
            # frame copy ("DECORDArrayCopyFromTo"); failing here lets "auto" fall back to PyAV.
            first = reader.get_batch([0]).asnumpy() if num_frames > 0 else None
        except Exception as exc:  # decord raises DECORDError/RuntimeError with C++ traces
            raise InputError(f"{self.path}: cannot read video ({short_message(exc)})") from exc
        if num_frames <= 0:
            raise InputError(f"{self.path}: cannot read video (no frames)")
        self._reader, self.num_frames, self.fps = reader, num_frames, fps
        coded = self._coded(first)
        self.coded_hw = (int(coded.shape[1]), int(coded.shape[2]))
        self.decoded_frames = 1

    def _coded(self, frames: np.ndarray) -> np.ndarray:
        return np.rot90(frames, -self._turns, axes=(1, 2)) if self._turns else frames

    def read(self, indices: list[int]) -> np.ndarray:
        if self._reader is None:
            raise InputError(f"{self.path}: cannot read video (reader is closed)")
        try:
            frames = self._reader.get_batch(list(indices)).asnumpy()
        except Exception as exc:
            raise InputError(f"{self.path}: cannot read video ({short_message(exc)})") from exc
        if frames.shape[0] != len(indices):
            raise InputError(f"{self.path}: cannot read video (asked for {len(indices)} frames, "
                             f"got {frames.shape[0]})")
        self.decoded_frames += len(indices)  # decord does not say how many it decoded to get there
        return self._coded(frames)

    def timestamps(self, indices: list[int]) -> list[float] | None:
        try:
            return [float(t) for t in self._reader.get_frame_timestamp(list(indices))[:, 0]]
        except Exception as exc:  # noqa: BLE001 - decord's timestamp table is optional
            logger.debug("%s: decord timestamps failed (%s); using index / fps", self.path, exc)
            return None

    def close(self) -> None:
        self._reader = None  # decord keeps the file open until its reader goes
