"""Raw inputs (a video, frame folder or image) encoded in memory as the extractors would."""
from __future__ import annotations

from pathlib import Path

import torch


def encode_raw_input(path: Path, encoder, window: int, frame_step: int, batch_size: int,
                     video_backend: str = "auto") -> torch.Tensor:
    """Views `[windows, N, D]` of a video, frame folder or image, extracted in memory as the
    extractors would (windows of `window` frames, the tail padded; an image repeated to `window`)."""
    from src.frames import IMAGE_EXTENSIONS, VideoReader, find_frames, load_image
    from src.windows import FrameWindowDataset, VideoWindowDataset, plan_windows

    if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
        frame = encoder.preprocess(load_image(path)[None])  # [C, 1, crop, crop]
        return encoder.encode(frame.unsqueeze(0).expand(-1, -1, window, -1, -1)).float()
    if path.is_dir():
        frames = [p for _, p in find_frames(path)]
        if not frames:
            raise ValueError(f"{path}: no frame files (frame_NNNN.*) in this folder")
        dataset = FrameWindowDataset(frames, plan_windows(len(frames), window), encoder.transform,
                                     min_side=encoder.model.patch_size)
    else:
        with VideoReader(path, backend=video_backend) as reader:
            indices, video_backend = list(range(0, reader.num_frames, frame_step)), reader.backend
        dataset = VideoWindowDataset(path, indices, plan_windows(len(indices), window), encoder.transform,
                                     backend=video_backend, min_side=encoder.model.patch_size)
    views = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[k] for k in range(start, min(start + batch_size, len(dataset)))]
        failed = [it["error"] for it in items if "error" in it]
        if failed:
            raise ValueError(f"{path}: {failed[0]}")
        views.append(encoder.encode(torch.stack([it["clip"] for it in items])).float())
    return torch.cat(views)

