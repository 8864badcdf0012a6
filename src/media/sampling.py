"""Which source frames a video run uses: every n-th frame, or frames sampled at F per second of video time.

Sampling by time reads the presentation timestamps, so a 25 fps and a 30 fps copy of a scene (or a
variable-frame-rate phone clip) give sampled frames at the same moments: sample k is the frame
shown at ``start + k / F`` (the last frame whose timestamp is not after that moment).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

from src.errors import ConfigError

# A frame whose timestamp is within this of a sampling moment counts as shown at it: decoders round
# timestamps (decord: float32), and a frame at 1.0000001 s is the one shown at 1 s.
_TIME_TOLERANCE_S = 1e-4


@dataclass(frozen=True)
class SampledFrames:
    """Source frame index and its presentation time (s) for each position of the sampled stream."""

    indices: list[int]
    timestamps: list[float]
    sample_fps: float | None = None


def sample_video(reader, frame_step: int = 1, sample_fps: float | None = None,
                 first_frame: int | None = None, last_frame: int | None = None) -> SampledFrames:
    """The frames of `reader` (a VideoReader) a run uses, within frames `first_frame`..`last_frame`
    (indices from 0, inclusive): every `frame_step`-th one, or `sample_fps` per second of video time."""
    start = first_frame or 0
    stop = reader.num_frames if last_frame is None else min(last_frame + 1, reader.num_frames)
    if sample_fps is None:
        indices = list(range(start, stop, frame_step))
        return SampledFrames(indices, _rounded(reader.timestamps(indices)))
    if not sample_fps > 0:
        raise ConfigError(f"--sample_fps must be positive, got {sample_fps}")
    if frame_step != 1:
        raise ConfigError("--sample_fps and --frame_step both choose frames: give one of them")
    available = list(range(start, stop))
    times = reader.timestamps(available)
    positions = positions_at_fps(times, sample_fps, frame_duration=1.0 / reader.fps)
    return SampledFrames([available[p] for p in positions], _rounded([times[p] for p in positions]), sample_fps)


def positions_at_fps(times: list[float], sample_fps: float, frame_duration: float) -> list[int]:
    """Positions into `times` (non-decreasing presentation times, s) of the frames shown at
    ``times[0] + k / sample_fps`` for k = 0, 1, ... while that moment is before the last frame ends
    (its timestamp + `frame_duration`)."""
    if not times:
        return []
    end = times[-1] + frame_duration
    positions, k = [], 0
    while True:
        moment = times[0] + k / sample_fps
        if moment >= end - _TIME_TOLERANCE_S:
            return positions
        positions.append(max(0, bisect.bisect_right(times, moment + _TIME_TOLERANCE_S) - 1))
        k += 1


def _rounded(times: list[float]) -> list[float]:
    # float32 noise (8.960000038146973) would read as a real sub-microsecond offset
    return [round(t, 6) for t in times]
