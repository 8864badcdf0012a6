"""Image runs: still images → clips (one frame through a 2.1 model's image path, or the image
repeated along time) → encoder → chunk files of ``--chunk_size`` images (+ table rows, manifest).

The sorted image list of a shard is cut into chunks; chunk k goes to
``layout.chunk_name(i, N, k)``. A rerun skips complete chunks written by the same run (its
`RunSignature`), pools table rows it lacks from them, and encodes the rest.
"""
from __future__ import annotations

import logging
import os
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src import frames
from src.embeddings_table import Pooling, TableWriter
from src.errors import ConfigError
from src.extract import layout
from src.extract.pooling import aggregate_features
from src.extract.signature import RunSignature, table_config
from src.extract.writer import RecordWriter
from src.features import Manifest, claim_output, is_complete, save_chunk
from src.inference import ClipEncoder
from src.options import EncoderOptions
from src.windows import batches_by_key, check_frame_size

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


def split_chunks(items: Sequence, chunk_size: int) -> list[list]:
    """Consecutive groups of ``chunk_size`` (the last one may be shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [list(items[i:i + chunk_size]) for i in range(0, len(items), chunk_size)]


def list_images(image_dir: str | os.PathLike, patterns: Sequence[str] | None = None,
                recursive: bool = False) -> list[str]:
    """Relative posix paths of the images under ``image_dir``, sorted."""
    root = Path(image_dir)
    return [p.relative_to(root).as_posix() for p in frames.find_images(root, patterns, recursive)]


def existing_chunk_keys(path: Path, expected: Iterable[str], signature: RunSignature) -> set[str] | None:
    """Keys of a complete chunk file written for these inputs and settings, else None.

    A complete file whose keys are not among ``expected`` (the input list changed) is
    recomputed; one written by another run (`RunSignature`) is a ConfigError.
    """
    if not is_complete(path):
        return None
    try:  # mmap: only the keys and metadata are touched, not the (large) feature data
        chunk = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - unreadable now means recompute
        logger.warning("%s: cannot reread (%s); recomputing", path.name, exc)
        return None
    keys = set(chunk)
    if not keys <= set(expected):
        logger.warning("%s was written for a different input list; recomputing it", path.name)
        return None
    for entry in list(chunk.values())[:1]:
        meta = entry.get("metadata", {}) if isinstance(entry, dict) else {}
        signature.check_same_run(RunSignature.of_record(meta.get("model_info"), meta), path)
    return keys


def image_sizes(encoder: ClipEncoder, image_dir: Path, paths: Sequence[str], image_frames: int) -> dict:
    """`--spatial full`: each image's (height, width) from its header, to batch images of one grid
    together; refuses (ConfigError), before any work, images whose grid exceeds --max_tokens."""
    logger.info("--spatial full: reading the sizes of %d images (headers only)", len(paths))
    sizes = {rel: frames.read_image_size(image_dir / rel) for rel in paths}
    too_big = []
    for rel, hw in sizes.items():
        if hw is not None:
            try:
                encoder.spatial.check_tokens(image_frames, *hw, name=f"{image_dir / rel}")
            except ValueError as exc:
                too_big.append(str(exc))
    if too_big:
        more = f" ({len(too_big) - 1} more image(s) too)" if len(too_big) > 1 else ""
        raise ConfigError(too_big[0] + more)
    return sizes


# --------------------------------------------------------------------------- the run


@dataclass
class ExtractionSummary:
    done: int = 0
    skipped: int = 0
    failed: int = 0
    chunks_written: int = 0
    chunks_skipped: int = 0
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ImageRun:
    """One shard's images through one encoder into one output folder (see `extract_directory`)."""

    encoder: ClipEncoder
    image_dir: Path
    output_dir: Path
    writer: RecordWriter
    image_frames: int
    batch_size: int
    num_workers: int
    overwrite: bool
    items: dict[str, str]  # relative path → the image's resolved path (its identity in the table)
    sizes: dict = field(default_factory=dict)  # `full`: image sizes, to batch one grid per forward pass
    summary: ExtractionSummary = field(default_factory=ExtractionSummary)
    bar: object = None

    def __post_init__(self):
        self.signature = RunSignature.of_run(self.encoder, self.image_frames)

    def rows_missing(self, rels: list[str]) -> list[str]:
        self.writer.table.refresh()  # parts other processes wrote meanwhile
        return [rel for rel in rels if not self.writer.has_rows(self.items[rel])]

    def skip(self, rels: Iterable[str], output: str, error: str | None = None, chunk: bool = False) -> None:
        for rel in rels:
            self.writer.log(rel, output, "skipped", error)
            self.summary.skipped += 1
        self.summary.chunks_skipped += int(chunk)

    def run_chunk(self, k: int, group: list[str], shard: tuple[int, int]) -> None:
        name = layout.chunk_name(*shard, k)
        path = self.output_dir / name
        tokens = self.writer.store_tokens
        existing = None if self.overwrite or not tokens else existing_chunk_keys(path, group, self.signature)
        if not tokens and not self.rows_missing(group):
            self.skip(group, str(self.writer.table.dir))
        elif existing is not None:
            self.keep_chunk(path, group, existing)
        else:
            with claim_output(path) as mine:
                done = (existing_chunk_keys(path, group, self.signature) is not None if tokens
                        else not self.rows_missing(group))
                if not mine or (not self.overwrite and done):
                    # another process (e.g. a resubmitted array task) has it or just finished it
                    self.skip(group, name, "written by another process", chunk=True)
                else:
                    todo = group if tokens else self.rows_missing(group)
                    self.skip(sorted(set(group) - set(todo)), self.writer.output_name(path))
                    self.encode_chunk(todo, path)
        self.bar.update(len(group))

    def keep_chunk(self, path: Path, group: list[str], existing: set[str]) -> None:
        """A complete chunk of this run: its images are skipped (and its missing table rows pooled)."""
        if self.writer.table is not None:
            with ExitStack() as claims:
                self.writer.pool_rows_from_file(path, [self.items[rel] for rel in existing], claims, self.image_dir)
                self.writer.table.flush()  # the rows are on disk before the claim goes
        for rel in group:
            if rel in existing:
                self.skip([rel], path.name)
            else:
                error = f"not in the existing {path.name} (failed in an earlier run; --overwrite retries)"
                self.writer.log(rel, None, "failed", error)
                self.summary.failed += 1
        self.summary.chunks_skipped += 1
        logger.debug("%s complete; skipped %d images", path.name, len(group))

    def record(self, rel: str, features: torch.Tensor, hw: tuple[int, int]) -> dict:
        h, w = hw
        return {"features": features, "metadata": {
            "source": rel,
            **self.encoder.spatial.metadata(self.image_frames, h, w),  # grid, image_size, covered box
            "image_frames": self.image_frames,
            "image_path": "image" if self.image_frames == 1 else "video (image repeated)",
            "model_info": self.encoder.describe(self.image_frames, (h, w)),
        }}

    def encode_chunk(self, group: list[str], path: Path) -> None:
        """Decode, encode and save one chunk, and its table rows (the caller holds its claim)."""
        chunk: dict[str, dict] = {}
        batches = batches_by_key([self.encoder.spatial.batch_key(self.sizes.get(rel)) for rel in group],
                                 self.batch_size)
        dataset = ImageDataset(self.image_dir, group, self.encoder.transform, self.encoder.model.patch_size)
        for batch in make_loader(dataset, batches, self.num_workers, str(self.encoder.device)):
            for i, error in batch["errors"]:
                logger.error("%s: %s", group[i], error)
                self.writer.log(group[i], None, "failed", error)
                self.summary.failed += 1
            if batch["frames"] is not None:
                out = encode_frames(self.encoder, batch["frames"], self.image_frames)
                self.encoder.check_finite(out, [group[i] for i in batch["index"]])  # inf/NaN: stop, store nothing
                for j, (i, hw) in enumerate(zip(batch["index"], batch["sizes"])):
                    record = self.record(group[i], out[j], hw)
                    self.writer.add_rows(out[j], record["metadata"]["model_info"], record["metadata"], path,
                                         source=self.items[group[i]], extraction_time=datetime.now(timezone.utc))
                    chunk[group[i]] = record if self.writer.store_tokens else None  # `pooled`: only its row is kept
        self.finish_chunk({rel: chunk[rel] for rel in group if rel in chunk}, path)  # the list's order

    def finish_chunk(self, chunk: dict, path: Path) -> None:
        if self.writer.table is not None:
            self.writer.table.flush()  # the chunk's rows are on disk before its claim goes
        if not self.writer.store_tokens:
            for rel in chunk:  # images stored as table rows alone
                self.writer.log(rel, str(self.writer.table.dir), "ok")
            self.summary.done += len(chunk)
            return
        if not chunk:
            logger.warning("%s: every image of this chunk failed; no file written", path.name)
            return
        save_chunk(chunk, path)
        for rel in chunk:
            self.writer.log(rel, path.name, "ok")
        self.summary.done += len(chunk)
        self.summary.chunks_written += 1
        logger.debug("wrote %s (%d images)", path.name, len(chunk))


def extract_directory(
    encoder: ClipEncoder,
    image_dir: str | os.PathLike,
    rel_paths: Sequence[str],
    output_dir: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    image_frames: int = 16,
    chunk_size: int = 1000,
    batch_size: int = 8,
    num_workers: int = 0,
    overwrite: bool = False,
    manifest: Manifest | None = None,
    progress: bool | None = None,
    store: str = "tokens",
    table: TableWriter | None = None,
    pooling: Pooling | None = None,
) -> ExtractionSummary:
    """Encode ``rel_paths`` (this shard's images, relative to ``image_dir``) into chunk files.

    Chunk k of the sorted list goes to ``output_dir / chunk_name(i, N, k)``; complete chunks
    are skipped unless ``overwrite``. Unreadable images are logged, recorded as failed in the
    manifest and left out of their chunk. At most one chunk's features are held in memory.
    With ``store`` "pooled" or "both", each image also becomes a row of ``table`` (its vector
    pooled as ``pooling`` says); "pooled" writes no chunk files.
    """
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    image_dir, output_dir = Path(image_dir), Path(output_dir)
    manifest = manifest if manifest is not None else Manifest(layout.manifest_path(output_dir))
    writer = RecordWriter(manifest, table, pooling, store, overwrite, shard)
    if table is not None:
        table.expect(table_config(encoder, image_frames, writer.pooling.name))
    paths = sorted(rel_paths)
    chunks = split_chunks(paths, chunk_size)
    layout.check_no_foreign_chunks(output_dir, *shard, len(chunks))
    run = ImageRun(encoder, image_dir, output_dir, writer, image_frames, batch_size, num_workers, overwrite,
                   items={rel: str((image_dir / rel).resolve()) for rel in rel_paths},
                   sizes=image_sizes(encoder, image_dir, paths, image_frames) if encoder.spatial.mode == "full" else {})
    start = time.perf_counter()
    run.bar = tqdm(total=len(paths), unit="img", desc=f"shard {shard[0]}/{shard[1]}",
                   disable=None if progress is None else not progress, dynamic_ncols=True)
    try:
        for k, group in enumerate(chunks):
            run.run_chunk(k, group, shard)
    finally:
        run.bar.close()
        run.summary.seconds = time.perf_counter() - start
    return run.summary
