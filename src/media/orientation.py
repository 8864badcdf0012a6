"""How a player turns a video's coded frames: the container's display matrix as a quarter-turn / flip.

Phones store portrait video as landscape frames plus a display matrix (rotation, sometimes a mirror
flip). Every backend returns the coded frames turned by :meth:`Orientation.apply`, so the same file
gives the same pixels (and features) whichever decoder read it, and the same as ffmpeg's autorotated
decode (what a player shows).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Orientation:
    """A symmetry of the rectangle, applied to ``[..., H, W, C]`` frames in this order: swap the
    H and W axes (``transpose``), reverse the rows (``flip_rows``), reverse the columns (``flip_cols``)."""

    transpose: bool = False
    flip_rows: bool = False
    flip_cols: bool = False

    @classmethod
    def from_display_matrix(cls, matrix) -> "Orientation":
        """From FFmpeg's 3×3 display matrix (9 int32, 16.16 fixed point, row-major [a b u; c d v; x y w]):
        a source pixel (x, y) is shown at (a·x + c·y, b·x + d·y)."""
        m = [float(v) for v in np.asarray(matrix, dtype=np.float64).reshape(-1)[:9]]
        a, b, c, d = m[0], m[1], m[3], m[4]
        if abs(a) + abs(d) >= abs(b) + abs(c):  # x' follows x: no axis swap
            found = cls(transpose=False, flip_rows=d < 0, flip_cols=a < 0)
            off = min(abs(b), abs(c)) > 1e-3 * max(abs(a), abs(d))
        else:  # x' follows y: the axes swap (a quarter turn)
            found = cls(transpose=True, flip_rows=b < 0, flip_cols=c < 0)
            off = min(abs(a), abs(d)) > 1e-3 * max(abs(b), abs(c))
        if off:
            logger.warning("display matrix %s is not a quarter turn; using the nearest (%s)", m[:6], found)
        return found

    # -- what a player reports
    @property
    def rotation(self) -> int:
        """Counter-clockwise degrees (0, 90, 180, 270) the coded frame is turned, before :attr:`hflip`
        (as ffmpeg's ``-display_rotation`` and ``-display_hflip`` write them)."""
        return self._turns_and_flip()[0] * 90

    @property
    def hflip(self) -> bool:
        """Mirrored left-right after the rotation (a vertical flip is a 180° turn and a mirror)."""
        return self._turns_and_flip()[1]

    def _turns_and_flip(self) -> tuple[int, bool]:
        probe = np.arange(6).reshape(2, 3, 1)
        target = self.apply(probe)
        for flip in (False, True):
            for turns in range(4):
                turned = np.rot90(probe, turns, axes=(0, 1))
                turned = turned[:, ::-1] if flip else turned
                if turned.shape == target.shape and (turned == target).all():
                    return turns, flip
        raise AssertionError(f"{self} is not a symmetry of the rectangle")  # unreachable: D4 is closed

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_rows or self.flip_cols)

    def displayed_hw(self, coded_hw: tuple[int, int]) -> tuple[int, int]:
        h, w = coded_hw
        return (w, h) if self.transpose else (h, w)

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """``frames`` ``[..., H, W, C]`` as displayed (a view where possible)."""
        rows, cols = frames.ndim - 3, frames.ndim - 2
        if self.transpose:
            frames = np.swapaxes(frames, rows, cols)
        if self.flip_rows:
            frames = np.flip(frames, rows)
        if self.flip_cols:
            frames = np.flip(frames, cols)
        return frames

    def metadata(self, coded_hw: tuple[int, int]) -> dict:
        """What a window records: the coded size and how it was turned to the displayed one."""
        return {"coded_size": [int(coded_hw[0]), int(coded_hw[1])], "rotation": self.rotation, "hflip": self.hflip}


IDENTITY = Orientation()


def display_rotation_degrees(matrix) -> float:
    """FFmpeg's ``av_display_rotation_get``: the counter-clockwise angle that its ``-display_rotation``
    writes (flips read as 180° turns, which is what decoders that only rotate do with them)."""
    m = np.asarray(matrix, dtype=np.float64).reshape(-1)[:9] / 65536.0
    scale0, scale1 = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if scale0 == 0 or scale1 == 0:
        return 0.0
    return -math.degrees(math.atan2(m[1] / scale1, m[0] / scale0))


def read_display_matrix(frame) -> np.ndarray | None:
    """The display matrix a PyAV frame carries (FFmpeg copies the stream's onto decoded frames), or None."""
    for item in getattr(frame, "side_data", ()) or ():
        kind = getattr(item, "type", None)
        if "DISPLAYMATRIX" in str(getattr(kind, "name", kind)).upper():
            data = bytes(item)
            if len(data) >= 36:
                return np.frombuffer(data[:36], dtype=np.int32)
    return None
