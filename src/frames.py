"""Compatibility module: the names that lived here before `src/media/` (images, frame folders,
videos). New code imports from `src.media`."""

from src.media import (DEFAULT_FRAME_PATTERN, DEFAULT_IMAGE_PATTERNS, IMAGE_EXTENSIONS,  # noqa: F401
                       VIDEO_BACKENDS, VideoReader, find_frames, find_gaps, find_images, load_image,
                       parse_frame_number, read_image_size)
from src.media.decord_backend import import_decord as _import_decord  # noqa: F401  (tests probe for decord)
