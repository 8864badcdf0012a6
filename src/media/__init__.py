"""Inputs as pixels: image files (any mode → RGB uint8), numbered frame folders, and videos
through small backend objects (decord, PyAV) turned as a player shows them and sampled in time."""

from src.media.frame_folders import DEFAULT_FRAME_PATTERN, find_frames, find_gaps, parse_frame_number
from src.media.images import (DEFAULT_IMAGE_PATTERNS, IMAGE_EXTENSIONS, find_images, load_image,
                              read_image_size)
from src.media.orientation import Orientation
from src.media.sampling import SampledFrames, sample_video
from src.media.video import VIDEO_BACKENDS, VideoReader

__all__ = [
    "DEFAULT_FRAME_PATTERN", "DEFAULT_IMAGE_PATTERNS", "IMAGE_EXTENSIONS", "VIDEO_BACKENDS",
    "Orientation", "SampledFrames", "VideoReader",
    "find_frames", "find_gaps", "find_images", "load_image", "parse_frame_number", "read_image_size",
    "sample_video",
]
