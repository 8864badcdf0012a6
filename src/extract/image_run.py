"""Image runs: a shard's images → chunk files (+ table rows, manifest) of at most ``--chunk_size``
images and at most ``--max_chunk_mb`` of features: one chunk is what a process holds in memory.

The sorted image list of a shard is cut into chunks (by image count and feature bytes, both known
before any image is encoded, so a rerun cuts the same chunks); chunk k goes to
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
from typing import Iterable, Sequence

import torch
from torch.utils.data import DataLoader

from src import frames, guards
from src.embeddings_table import Pooling, TableWriter
from src.errors import ConfigError
from src.extract import layout
from src.extract.images import ImageDataset, collate_images, encode_frames
from src.extract.signature import RunSignature, table_config
from src.extract.writer import RecordWriter
from src.features import Manifest, claim_output, is_complete, save_chunk
from src.inference import ClipEncoder
from src.windows import batches_by_key, decoding_workers, worker_init

logger = logging.getLogger(__name__)

# Features a process holds at once (one chunk): a ViT-g/384 image repeated to 16 frames is 4608 tokens
# × 1408 × 2 bytes ≈ 13 MB, so 1000 images would be 13 GB per process, 8 shards on a node > 100 GB.
DEFAULT_CHUNK_BYTES = 2**30


def split_chunks(items: Sequence, chunk_size: int, item_bytes: Sequence[int] | None = None,
                 max_bytes: int | None = None) -> list[list]:
    """Consecutive groups of at most ``chunk_size`` items and, given ``item_bytes`` (one per item),
    at most ``max_bytes`` bytes (an item larger than that is a chunk of its own)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if max_bytes is not None and max_bytes < 1:
        raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
    chunks: list[list] = []
    size = 0
    for i, item in enumerate(items):
        nbytes = item_bytes[i] if item_bytes is not None else 0
        if not chunks or len(chunks[-1]) >= chunk_size or (max_bytes is not None and chunks[-1] and size + nbytes > max_bytes):
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += nbytes
    return chunks


def feature_bytes(encoder: ClipEncoder, image_frames: int, image_hw: tuple[int, int] | None) -> int:
    """Bytes of one image's stored features (fp16 tokens × width); an unknown size (`full`, unreadable
    header) counts as the crop."""
    tp, hp, wp = encoder.grid(image_frames, image_hw or (encoder.crop, encoder.crop))
    return tp * hp * wp * encoder.embed_dim * 2


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


def open_table(image_dir: str | os.PathLike, output_dir: str | os.PathLike, store: str,
               table_dir: str | os.PathLike | None, shard: tuple[int, int], part_rows: int,
               overwrite: bool = False) -> TableWriter | None:
    """The table an image run appends to (None with ``store="tokens"``), opened before the model
    loads: an output or table folder that is the image folder is refused (ConfigError), and a
    damaged or foreign part in the table folder is named (InputError), before any work."""
    table_dir = Path(table_dir or layout.default_table_dir(output_dir))
    outputs = [("--output_dir", output_dir)] + ([("--table_dir", table_dir)] if store != "tokens" else [])
    guards.refuse_folder_over_input(outputs, [("--image_dir", image_dir)])
    return None if store == "tokens" else TableWriter(table_dir, shard, part_rows, overwrite=overwrite)


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
        self.paths = sorted(self.items)
        self.position = {rel: i for i, rel in enumerate(self.paths)}
        self._batches: list[list[int]] = []  # the chunk being encoded, as batches of positions in `paths`
        self._loader: DataLoader | None = None

    @property
    def loader(self) -> DataLoader:
        """One DataLoader for the run over every image; its workers live across chunks (each chunk sets
        the batches, which the main process samples)."""
        if self._loader is None:
            dataset = ImageDataset(self.image_dir, self.paths, self.encoder.transform, self.encoder.model.patch_size)
            workers = {"persistent_workers": True, "worker_init_fn": worker_init} if self.num_workers else {}
            self._loader = DataLoader(dataset, batch_sampler=self._batches, num_workers=self.num_workers,
                                      collate_fn=collate_images, pin_memory=self.encoder.device.type == "cuda",
                                      **workers)
        return self._loader

    def close(self) -> None:
        self._loader = None  # its workers stop with it

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
        self._batches[:] = [[self.position[group[j]] for j in batch] for batch in batches]
        for batch in self.loader:
            for i, error in batch["errors"]:
                logger.error("%s: %s", self.paths[i], error)
                self.writer.log(self.paths[i], None, "failed", error)
                self.summary.failed += 1
            if batch["frames"] is not None:
                out = encode_frames(self.encoder, batch["frames"], self.image_frames)
                self.encoder.check_finite(out, [self.paths[i] for i in batch["index"]])  # inf/NaN: stop, store nothing
                for j, (i, hw) in enumerate(zip(batch["index"], batch["sizes"])):
                    rel = self.paths[i]
                    # a view of the batch: every row of it goes into this chunk, which is saved without a copy
                    record = self.record(rel, out[j], hw)
                    self.writer.add_rows(out[j], record["metadata"]["model_info"], record["metadata"], path,
                                         source=self.items[rel], extraction_time=datetime.now(timezone.utc))
                    chunk[rel] = record if self.writer.store_tokens else None  # `pooled`: only its row is kept
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
    chunk_bytes: int | None = DEFAULT_CHUNK_BYTES,
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

    Chunk k of the sorted list (at most ``chunk_size`` images and ``chunk_bytes`` of features; None:
    no byte limit) goes to ``output_dir / chunk_name(i, N, k)``; complete chunks
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
    sizes = image_sizes(encoder, image_dir, paths, image_frames) if encoder.spatial.mode == "full" else {}
    chunks = split_chunks(paths, chunk_size, [feature_bytes(encoder, image_frames, sizes.get(rel)) for rel in paths],
                          chunk_bytes)
    layout.check_no_foreign_chunks(output_dir, *shard, len(chunks))
    run = ImageRun(encoder, image_dir, output_dir, writer, image_frames, batch_size, num_workers, overwrite,
                   items={rel: str((image_dir / rel).resolve()) for rel in rel_paths}, sizes=sizes)
    start = time.perf_counter()
    run.bar = tqdm(total=len(paths), unit="img", desc=f"shard {shard[0]}/{shard[1]}",
                   disable=None if progress is None else not progress, dynamic_ncols=True)
    try:
        with decoding_workers(num_workers):
            for k, group in enumerate(chunks):
                run.run_chunk(k, group, shard)
    finally:
        run.close()
        run.bar.close()
        run.summary.seconds = time.perf_counter() - start
    return run.summary
