"""Still images → clips (one frame through a 2.1 model's image path, or the image repeated along
time) → encoder: `ImageExtractor` (the seed's `VJEPA2Extractor`) and the dataset that decodes an
image folder for a run (`src.extract.image_run`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src import frames
from src.extract.pooling import aggregate_features
from src.inference import ClipEncoder
from src.options import EncoderOptions
from src.windows import check_frame_size

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- frames per image


def check_image_frames(image_frames) -> None:
    """``image_frames`` is None (the model's default), 1 (image path) or an even integer ≥ 2."""
    if image_frames is None:
        return
    if isinstance(image_frames, bool) or not isinstance(image_frames, (int, np.integer)) \
            or image_frames < 1 or (image_frames > 1 and image_frames % 2):
        raise ValueError(f"image_frames must be 1 (a 2.1 model's image path) or an even integer >= 2, "
                         f"got {image_frames!r}")


def resolve_image_frames(encoder: ClipEncoder, image_frames: int | None) -> int:
    """The frames per image for this model: 1 by default when it has an image path (2.1), else 16."""
    check_image_frames(image_frames)
    has_image_path = encoder.model.has_image_path
    if image_frames is None:
        return 1 if has_image_path else 16
    if image_frames == 1 and not has_image_path:
        raise ValueError(f"image_frames 1 needs a model with an image path (V-JEPA 2.1); "
                         f"{encoder.spec} is V-JEPA {encoder.model.generation}: use 2 or 16")
    return int(image_frames)


def encode_frames(encoder: ClipEncoder, clips: torch.Tensor, image_frames: int) -> torch.Tensor:
    """Single preprocessed frames ``[B, C, 1, H, W]`` (one size) → fp16 ``[B, tokens, D]``.

    With ``image_frames`` 1 the frame goes through the model's image path as it is; otherwise
    it is repeated to ``image_frames`` along T with ``expand`` (no copy here; the encoder's
    device/dtype move materialises it).
    """
    if clips.ndim != 5 or clips.shape[2] != 1:
        raise ValueError(f"expected single frames [B, C, 1, H, W], got shape {tuple(clips.shape)}")
    return encoder.encode(clips.expand(-1, -1, image_frames, -1, -1))


class ImageExtractor:
    """Image → features with one loaded encoder (`VJEPA2Extractor` is this with the seed's keywords).

    Args:
        options: how the encoder is loaded and what it stores.
        image_frames: 1 (2.1's image path) or even ≥ 2 (the image repeated along time); None: the
            model's default (1 for 2.1, 16 for 2.0).
    """

    def __init__(self, options: EncoderOptions, image_frames: int | None = None):
        check_image_frames(image_frames)
        self.encoder = ClipEncoder(options)
        self.image_frames = resolve_image_frames(self.encoder, image_frames)
        # raises here if image_frames does not tile into tubelets (Tp does not depend on the image)
        tp, hp, wp = self.encoder.grid(self.image_frames, (self.encoder.crop, self.encoder.crop))
        if self.encoder.spatial.mode == "full":
            logger.info("each image %s → %d temporal token(s) × its own whole-image grid",
                        "goes through the model's image path as one frame" if self.image_frames == 1
                        else f"is repeated to {self.image_frames} frames", tp)
        elif self.image_frames == 1:
            logger.info("each image goes through the model's image path as one frame → %d×%d = %d tokens per image",
                        hp, wp, hp * wp)
        else:
            logger.info(
                "each image is repeated to %d frames → %d temporal × %d×%d spatial = %d tokens per image (%s)",
                self.image_frames, tp, hp, wp, tp * hp * wp,
                "the fast mode" if tp == 1
                else f"image_frames=2 is the fast mode: 1 temporal token, {tp}× fewer tokens",
            )

    @property
    def grid(self) -> tuple[int, int, int]:
        """Token grid (Tp, Hp, Wp) of one image, from the loaded model (`center`; with `full` each image
        has its own: `grid_for`)."""
        if self.encoder.spatial.mode == "full":
            raise ValueError("with spatial='full' each image has its own grid: use grid_for((height, width))")
        return self.encoder.grid(self.image_frames)

    def grid_for(self, image_hw: tuple[int, int]) -> tuple[int, int, int]:
        """Token grid (Tp, Hp, Wp) of an image of `image_hw` = (height, width) pixels."""
        return self.encoder.grid(self.image_frames, image_hw)

    @property
    def embed_dim(self) -> int:
        return self.encoder.embed_dim

    def _clip(self, image) -> torch.Tensor:
        frame = frames.load_image(image)
        return self.encoder.preprocess(frame[None])  # [C, 1, crop, crop]

    def extract_batch(self, images: Sequence) -> torch.Tensor:
        """``[B, tokens, D]`` float32 (CPU) features of several images in one forward pass (with
        ``spatial="full"`` the images must share one grid: one forward pass holds one grid)."""
        if len(images) == 0:
            raise ValueError("extract_batch: no images")
        clips = [self._clip(image) for image in images]
        sizes = sorted({tuple(c.shape[-2:]) for c in clips})
        if len(sizes) > 1:
            raise ValueError(f"extract_batch: images of different grids ({', '.join(f'{h}×{w} px' for h, w in sizes)}"
                             " after resizing) cannot share one forward pass; call extract_features per image")
        return encode_frames(self.encoder, torch.stack(clips), self.image_frames).float()

    def extract_features(self, image) -> torch.Tensor:
        """``[tokens, D]`` float32 (CPU) features of one image (path, PIL image or array)."""
        return self.extract_batch([image])[0]

    def aggregate_features(self, feats: torch.Tensor, method: str = "mean",
                           image_hw: tuple[int, int] | None = None) -> torch.Tensor:
        """Pool features of this extractor (see `src.extract.pooling.aggregate_features`); with
        ``spatial="full"`` give the image's ``(height, width)``, which sets its grid."""
        _, hp, wp = self.grid if image_hw is None else self.grid_for(image_hw)
        return aggregate_features(feats, method, (hp, wp))


# --------------------------------------------------------------------------- data loading


class ImageDataset(Dataset):
    """Preprocessed single frames of images under ``root``.

    Item i is ``(i, frame [C, 1, H, W], (h, w))`` (crop×crop, or the image's own size with
    ``--spatial full``) or, when the image cannot be read or
    preprocessed, ``(i, "error message", None)``: a bad file must not stop the run.
    """

    def __init__(self, root: str | os.PathLike, rel_paths: Sequence[str], preprocess: Callable, min_side: int = 1):
        self.root = Path(root)
        self.rel_paths = list(rel_paths)
        self.preprocess = preprocess
        self.min_side = min_side

    def __len__(self) -> int:
        return len(self.rel_paths)

    def __getitem__(self, i: int):
        path = self.root / self.rel_paths[i]
        try:
            image = frames.load_image(path)
            check_frame_size(image.shape[0], image.shape[1], self.min_side, name="image")
            frame = self.preprocess(image[None])
            return i, frame, (int(image.shape[0]), int(image.shape[1]))
        except Exception as exc:  # noqa: BLE001 - reported per image, never fatal
            message = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
            return i, message.removeprefix(f"{path}: ") or type(exc).__name__, None  # load_image names the path


def collate_images(items: list) -> dict:
    """Stack the readable frames; pass the errors through."""
    ok = [item for item in items if not isinstance(item[1], str)]
    return {
        "index": [item[0] for item in ok],
        "frames": torch.stack([item[1] for item in ok]) if ok else None,
        "sizes": [item[2] for item in ok],
        "errors": [(item[0], item[1]) for item in items if isinstance(item[1], str)],
    }


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(1)
    except Exception:  # noqa: BLE001 - only a performance hint
        pass


def make_loader(dataset: Dataset, batches: int | list[list[int]], num_workers: int, device: str) -> DataLoader:
    """`batches`: a batch size, or the batches themselves (lists of dataset indices)."""
    sizing = {"batch_size": batches, "shuffle": False} if isinstance(batches, int) else {"batch_sampler": batches}
    return DataLoader(dataset, **sizing, num_workers=num_workers, collate_fn=collate_images,
                      pin_memory=str(device).startswith("cuda"), persistent_workers=False,
                      worker_init_fn=_worker_init if num_workers > 0 else None)


def list_images(image_dir: str | os.PathLike, patterns: Sequence[str] | None = None,
                recursive: bool = False) -> list[str]:
    """Relative posix paths of the images under ``image_dir``, sorted."""
    root = Path(image_dir)
    return [p.relative_to(root).as_posix() for p in frames.find_images(root, patterns, recursive)]
