"""PyAV (FFmpeg) video backend: one decoder pass, keyframe seeks where a read skips ahead.

Frames are numbered in presentation order from the packets' timestamps (demuxed once, no
decoding). A read continues the running decoder when the wanted frame is ahead and no keyframe
lies between (decoding on is cheaper than seeking), seeks to the keyframe at or before it
otherwise, so reading windows in order costs the same per window from the first to the last.
Files whose timestamps cannot number the frames (an index claiming frames that are not there, a
stream without timestamps) are numbered by counting decoded frames from the start instead.
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path

import numpy as np

from src.errors import InputError
from src.media.orientation import read_display_matrix

logger = logging.getLogger(__name__)


def short_message(exc: BaseException) -> str:
    """First line of an exception message; decoders append multi-line traces."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else type(exc).__name__
    return first[:300]


def _import_av():
    try:
        import av
    except ImportError:
        return None
    return av


class PyAVBackend:
    """Frames of one video through PyAV; see the module docstring for how reads are ordered."""

    name = "pyav"

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        av = _import_av()
        if av is None:
            raise InputError(f"{self.path}: cannot read video (PyAV is not installed)")
        self._container, self._first = None, None
        try:
            self._scan(av)
            self._open_decoder(av)
        except InputError:
            self.close()
            raise
        except Exception as exc:  # av.FFmpegError (a ValueError/OSError subclass) and friends
            self.close()
            raise InputError(f"{self.path}: cannot read video ({short_message(exc)})") from exc

    # -- opening
    def _scan(self, av) -> None:
        """Frame count, timestamps and keyframes from the packets (demuxing only)."""
        with av.open(str(self.path)) as container:
            if not container.streams.video:
                raise LookupError("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            start, time_base = stream.start_time or 0, stream.time_base
            raw_pts, key_pts = [], []
            for packet in container.demux(stream):
                if packet.pts is None or packet.size <= 0:
                    continue
                raw_pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
            claimed = int(stream.frames or 0)
        raw_pts.sort()
        num_frames = claimed if claimed > 0 else len(raw_pts)
        if num_frames <= 0:
            raise InputError(f"{self.path}: cannot read video (no frames)")
        seconds = [float((p - start) * time_base) for p in raw_pts]
        if rate:
            fps = float(rate)
        elif len(seconds) > 1 and seconds[-1] > seconds[0]:
            fps = (len(seconds) - 1) / (seconds[-1] - seconds[0])
        else:
            raise InputError(f"{self.path}: cannot read video (unknown frame rate)")
        self.num_frames, self.fps = num_frames, fps
        numbered = len(raw_pts) == num_frames and len(set(raw_pts)) == num_frames
        self._raw_pts = raw_pts if numbered else None
        self._seconds = seconds if numbered else None
        self._index_of = {p: i for i, p in enumerate(raw_pts)} if numbered else None
        self._keyframes = sorted(self._index_of[p] for p in key_pts if p in self._index_of) if numbered else []

    def _open_decoder(self, av) -> None:
        self._open_container()
        self.decoded_frames = 0  # frames the decoder produced: what reads cost
        first = next(self._frames, None)
        if first is None:
            raise InputError(f"{self.path}: cannot read video (no decodable frame)")
        self.decoded_frames = 1
        if self._index_of is not None and self._index_of.get(first.pts) != 0:
            logger.debug("%s: first frame pts %s is not the first packet's; numbering by count", self.path, first.pts)
            self._raw_pts = self._index_of = None
            self._keyframes = []
        self._last = 0
        self._first = first.to_ndarray(format="rgb24")
        self.coded_hw = (int(self._first.shape[0]), int(self._first.shape[1]))
        self.display_matrix = read_display_matrix(first)

    # -- reading
    def _keyframe_at_or_before(self, index: int) -> int:
        position = bisect.bisect_right(self._keyframes, index) - 1
        return self._keyframes[position] if position >= 0 else 0

    def _position_before(self, target: int) -> None:
        """Put the decoder where decoding on reaches `target` soonest."""
        if self._index_of is None:  # numbered by counting: only forward, or again from the start
            if target <= self._last:
                self._restart()
            return
        key = self._keyframe_at_or_before(target)
        if self._last < target and key <= self._last + 1:
            return  # decoding on is no longer than seeking
        self._container.seek(int(self._raw_pts[key]), stream=self._stream, backward=True)
        self._frames = self._container.decode(self._stream)
        self._last = key - 1  # the next frame's timestamp tells where the seek really landed

    def _restart(self) -> None:
        self._container.close()
        self._open_container()

    def _open_container(self) -> None:
        self._container = _import_av().open(str(self.path))
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"  # frame threads: the decoder's own parallelism
        self._frames = self._container.decode(self._stream)
        self._last = -1  # index of the last frame the decoder gave (-1: at the start)

    def _next(self):
        frame = next(self._frames, None)
        if frame is None:
            return None
        self.decoded_frames += 1
        if self._index_of is None:
            self._last += 1
        else:
            index = self._index_of.get(frame.pts)
            if index is None:  # a frame the packets did not announce: cannot be placed
                return frame
            self._last = index
        return frame

    def read(self, indices: list[int]) -> np.ndarray:
        """Frames at sorted, distinct `indices` as ``[T, H, W, 3]`` uint8, coded orientation."""
        if self._container is None:  # read after close(): open again, from the start
            self._open_container()
        try:
            out = [self._first if target == 0 and self._first is not None else self._decode_to(target)
                   for target in indices]
        except InputError:
            raise
        except Exception as exc:
            raise InputError(f"{self.path}: cannot read video (decoding failed after {self.decoded_frames} "
                             f"frames: {short_message(exc)})") from exc
        return np.stack(out)

    def _decode_to(self, target: int) -> np.ndarray:
        self._position_before(target)
        retried = False
        while True:
            frame = self._next()
            if frame is None:
                raise InputError(f"{self.path}: cannot read video (only {self._last + 1} of {self.num_frames} "
                                 f"frames decodable; frame {target} requested)")
            if self._last == target:
                return frame.to_ndarray(format="rgb24")
            if self._last > target:
                if retried:
                    raise InputError(f"{self.path}: cannot read video (frame {target} is not decodable)")
                # a seek landed past it (an index that misplaces keyframes): decode from the start
                self._restart()
                retried = True

    def timestamps(self, indices: list[int]) -> list[float] | None:
        return None if self._seconds is None else [self._seconds[i] for i in indices]

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        self._first = None


def probe_display_matrix(path: str | os.PathLike) -> np.ndarray | None:
    """The display matrix of a video's first frame (for backends that do not give it); None when
    there is none or PyAV cannot tell (missing, or the file is one only another decoder reads)."""
    av = _import_av()
    if av is None:
        logger.warning("%s: PyAV is not installed; the display matrix (rotation, flips) is not read", path)
        return None
    try:
        with av.open(str(path)) as container:
            frame = next(container.decode(container.streams.video[0]), None)
    except Exception as exc:  # noqa: BLE001 - the backend opening the file reports what is wrong
        logger.debug("%s: no display matrix (%s)", path, short_message(exc))
        return None
    return None if frame is None else read_display_matrix(frame)
