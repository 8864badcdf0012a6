"""Window runs: frame folders and videos → windows → encoder → one feature file per window (+ table
rows, manifest lines). `SequentialVJEPA2Extractor` is `WindowRun` with the seed's keywords; the
pipeline runs it in-process.

Each input's windows are sorted first (`sort_windows`): finished (file and row there, written by
this run: skipped), pool-only (file there, row missing: pooled from the file) and pending
(encoded). Nothing is recorded before every finished window is checked, so a refused run leaves
no trace. Windows are claimed one by one across processes (`claim_output`), so two runs over one
output tree never encode the same window twice.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from src import embeddings_table, guards, sharding
from src.background import BackgroundWriter
from src.device import resolve_device
from src.embeddings_table import Pooling, TableWriter
from src.errors import ConfigError, ModelLoadError
from src.extract import layout, window_sources
from src.extract.signature import RunSignature, table_config
from src.extract.window_sources import WindowPlan, WindowSource
from src.extract.writer import RecordWriter
from src.features import FEATURE_FORMATS, Manifest, claim_output, is_complete, load_complete
from src.frames import DEFAULT_FRAME_PATTERN
from src.inference import ClipEncoder
from src.models.weights import resolve_spec_kind
from src.options import EncoderOptions
from src.windows import (VideoWindowDataset, batches_by_key, collate_windows, decoding_workers, default_num_workers,
                         worker_init, worker_order)

logger = logging.getLogger(__name__)

# Encoded batches waiting for the disk, at most: bounds memory when the disk is slower than the model.
WRITE_QUEUE_BATCHES = 4


@dataclass(frozen=True)
class WindowRunOptions:
    """Everything of a window run but the encoder (`EncoderOptions`) and the inputs."""

    plan: WindowPlan = field(default_factory=WindowPlan)
    batch_size: int = 1
    num_workers: int | None = None  # None: 0 on a CPU, the cores given − 1 on a GPU
    fmt: str = "pt"
    overwrite: bool = False
    frame_pattern: str = DEFAULT_FRAME_PATTERN
    allow_gaps: bool = False
    shard: tuple[int, int] = (0, 1)
    store: str = "tokens"
    pooling: Pooling = field(default_factory=Pooling)
    table_dir: Path | None = None  # None: `embeddings/` in the first output folder
    part_rows: int = embeddings_table.DEFAULT_PART_ROWS

    def __post_init__(self):
        if self.batch_size <= 0:
            raise ConfigError(f"--batch_size must be positive, got {self.batch_size}")
        if self.fmt not in FEATURE_FORMATS:
            raise ConfigError(f"--format must be one of {', '.join(FEATURE_FORMATS)}, got {self.fmt!r}")
        if self.store not in embeddings_table.STORE_CHOICES:
            raise ConfigError(f"--store must be one of {embeddings_table.STORE_CHOICES}, got {self.store!r}")
        embeddings_table.check_part_rows(self.part_rows)

    @classmethod
    def from_args(cls, args, shard: tuple[int, int] = (0, 1), output_dir: Path | None = None) -> "WindowRunOptions":
        """From a script's arguments; the table defaults to `embeddings/` in `output_dir`."""
        table_dir = args.table_dir or (layout.default_table_dir(output_dir or args.output_dir))
        return cls(plan=WindowPlan(args.window, args.stride, getattr(args, "tail", "pad")),
                   batch_size=args.batch_size, num_workers=args.num_workers, fmt=getattr(args, "format", "pt"),
                   overwrite=args.overwrite, frame_pattern=args.frame_pattern, allow_gaps=args.allow_gaps,
                   shard=shard, store=args.store, pooling=embeddings_table.pooling_from_args(args),
                   table_dir=Path(table_dir), part_rows=args.part_rows)


def _setting(name: str) -> property:
    """A `WindowRunOptions` field as an attribute of the run (set: a run with that field changed)."""
    def set_value(self, value) -> None:
        self.settings = dataclasses.replace(self.settings, **{name: value})

    return property(lambda self: getattr(self.settings, name), set_value)


@dataclass
class _Pass:
    """One input's pass: where its windows go and what this shard does with them."""

    source: WindowSource
    files: layout.WindowLayout
    writer: RecordWriter
    mine: list[int]  # this shard's window indices
    items: dict[int, str]  # window index → its table item
    summary: dict

    def name(self, index: int) -> str:
        return f"{self.source.name}#window{index}"


class WindowRun:
    """Sliding-window extraction over frame folders and videos with one (lazily loaded) encoder."""

    def __init__(self, options: EncoderOptions, settings: WindowRunOptions | None = None):
        settings = settings or WindowRunOptions()
        # The model loads on first use, after the inputs are checked: a hub ViT-g takes minutes to
        # load, and a wrong frame range should not wait for it. The spec itself is checked now.
        try:
            resolve_spec_kind(options.model)
        except ValueError as exc:
            raise ModelLoadError(str(exc)) from exc
        self.options, self.settings = options, settings
        self.num_workers = (default_num_workers(resolve_device(options.device)) if settings.num_workers is None
                            else settings.num_workers)
        self._encoder: ClipEncoder | None = None
        self._table: TableWriter | None = None
        self._held = ExitStack()  # claims of windows whose rows are buffered, not yet in a part file

    # the settings under the seed's attribute names
    model_name = property(lambda self: self.options.model)
    window = property(lambda self: self.settings.plan.window)
    stride = property(lambda self: self.settings.plan.stride or self.settings.plan.window)
    store = _setting("store")
    pooling = _setting("pooling")
    overwrite = _setting("overwrite")

    @property
    def table_dir(self) -> Path | None:
        return self._table.dir if self._table is not None else self.settings.table_dir

    @property
    def encoder(self) -> ClipEncoder:
        """The encoder's architecture (what plans, checks and describes windows); its weights are
        loaded by `_encode`, when a window needs them: a rerun of a finished run reads none."""
        if self._encoder is None:
            try:
                self._encoder = ClipEncoder(self.options, load_weights=False)
            except (ValueError, OSError) as exc:  # a bad spec or file: fatal for every input, not per input
                raise ModelLoadError(str(exc)) from exc
        return self._encoder

    def _load_weights(self) -> None:
        try:
            self.encoder.load_weights()
        except (ValueError, OSError) as exc:  # as for the architecture: fatal for every input
            raise ModelLoadError(str(exc)) from exc

    def table(self, output_dir: Path) -> TableWriter | None:
        """The embeddings table this run appends to (None when it stores tokens only)."""
        if self.store == "tokens":
            return None
        if self._table is None:
            self._table = TableWriter(self.settings.table_dir or layout.default_table_dir(output_dir),
                                      self.settings.shard, self.settings.part_rows, overwrite=self.overwrite)
        return self._table

    def close(self) -> None:
        """Write the table rows still buffered (call once the inputs are done)."""
        try:
            if self._table is not None:
                self._table.flush()
        finally:
            self._held.close()

    # ------------------------------------------------------------------ inputs
    def process_frame_directory(self, frame_dir, output_dir, first_frame: int | None = None,
                                last_frame: int | None = None, stride: int | None = None,
                                batch_size: int | None = None, whole_input: bool = False) -> dict:
        """Windows over the numbered frames of `frame_dir` → `output_dir/window_NNNNN.<fmt>`. With
        `whole_input` this process takes every window (the inputs, not the windows, are sharded)."""
        source = window_sources.frame_folder(
            frame_dir, self.settings.plan, lambda: self.encoder, frame_pattern=self.settings.frame_pattern,
            allow_gaps=self.settings.allow_gaps, first_frame=first_frame, last_frame=last_frame, stride=stride)
        return self.run(source, Path(output_dir), batch_size, whole_input)

    def process_video(self, video_path, output_dir, frame_step: int = 1, stride: int | None = None,
                      batch_size: int | None = None, backend: str = "auto", first_frame: int | None = None,
                      last_frame: int | None = None, whole_input: bool = False,
                      sample_fps: float | None = None) -> dict:
        """Windows over every `frame_step`-th frame of a video (frame indices from 0, optionally only
        `first_frame`..`last_frame`, inclusive) → `output_dir/window_NNNNN.<fmt>`; `whole_input`: as
        for `process_frame_directory`."""
        source = window_sources.video(video_path, self.settings.plan, lambda: self.encoder, frame_step=frame_step,
                                      backend=backend, first_frame=first_frame, last_frame=last_frame, stride=stride,
                                      sample_fps=sample_fps)
        return self.run(source, Path(output_dir), batch_size, whole_input)

    # ------------------------------------------------------------------ one input
    def run(self, source: WindowSource, output_dir: Path, batch_size: int | None = None,
            whole_input: bool = False) -> dict:
        """Every window of `source` of this shard (all of them with `whole_input`: the run's inputs
        are sharded, not their windows): finished ones kept, missing rows pooled, the rest encoded."""
        self._check_tokens(source)
        table_dir = [("the table folder", self.table_dir)] if self.store != "tokens" and self.table_dir else []
        guards.refuse_folder_over_input([("the output folder", output_dir), *table_dir],
                                        [("the input", Path(source.name))])  # windows among the frames
        output_dir.mkdir(parents=True, exist_ok=True)
        files = layout.WindowLayout(output_dir, self.settings.fmt)
        indices = [w.index for w in source.windows]
        mine = indices if whole_input else sharding.select_shard(indices, *self.settings.shard)
        table = self.table(output_dir)
        if table is not None:
            table.expect(table_config(self.encoder, self.window, self.pooling.name))
        items = {i: embeddings_table.item_id({**source.metadata(source.windows[i]), "window_idx": i}) for i in mine}
        summary = {"source": source.name, "windows": len(source.windows), "ok": 0, "skipped": 0, "failed": 0,
                   "outputs": [files.window(i) for i in mine], "encode_s": 0.0}
        finished, to_pool, pending = self.sort_windows(source, files, table, mine, items)
        writer = RecordWriter(Manifest(files.manifest), table, self.pooling, self.store, self.overwrite,
                              self.settings.shard, sharded_by="input" if whole_input else "windows")
        run = _Pass(source, files, writer, mine, items, summary)
        for i in finished:
            writer.log(run.name(i), writer.output_name(files.window(i)), "skipped", "already complete")
        for i in to_pool:  # the table row of a finished window: pooled from its token file, not re-encoded
            if writer.pool_rows_from_file(files.window(i), [items[i]], self._held):
                self._held.close()  # rows on disk: the claims can go
            writer.log(run.name(i), files.window(i).name, "skipped",
                       "already complete; table row pooled from the token file")
        summary["skipped"] += len(finished) + len(to_pool)
        if summary["skipped"]:
            logger.info("%s: %d of %d windows already complete, skipped", source.name, summary["skipped"], len(mine))
        padded = [w for w in source.windows if w.num_padded]
        if padded:
            logger.info("%s: last window padded with %d repeats of the last frame (recorded in its metadata)",
                        source.name, padded[0].num_padded)
        try:
            if pending:
                self._encode(run, pending, batch_size or self.settings.batch_size)
        finally:
            writer.manifest.close()
        return summary

    def _check_tokens(self, source: WindowSource) -> None:
        """Refuse, before any window is encoded, frame sizes whose grid exceeds --max_tokens."""
        for hw in dict.fromkeys(source.sizes or []):
            if hw is not None:
                try:
                    self.encoder.spatial.check_tokens(self.window, *hw,
                                                      name=f"{source.name}: a {self.window}-frame window")
                except ValueError as exc:
                    raise ConfigError(str(exc)) from None

    def sort_windows(self, source: WindowSource, files: layout.WindowLayout, table: TableWriter | None,
                     mine: list[int], items: dict[int, str]) -> tuple[list[int], list[int], list[int]]:
        """(finished, pool-only, pending) windows of this shard; refuses files and rows of another run."""
        finished, to_pool, pending = [], [], []
        store_tokens = self.store != "pooled"
        for i in mine:
            window = source.windows[i]
            other = files.other_format(i)
            if store_tokens and other.exists():  # two formats side by side would hold every window twice
                other_fmt = other.suffix.lstrip(".")
                raise ConfigError(f"{other}: written by a --format {other_fmt} run, this one writes --format "
                                  f"{self.settings.fmt}; use another --output_dir or remove the .{other_fmt} files")
            tokens_done = row_done = True
            if store_tokens:
                record = None if self.overwrite else load_complete(files.window(i))
                tokens_done = record is not None
                if tokens_done:
                    self.signature(source, window).check_same_run(
                        RunSignature.of_record(record.get("model_info"), record.get("metadata")), files.window(i))
            if table is not None:
                row_done = not self.overwrite and table.has(items[i])
                if row_done:
                    self._check_same_frames(table, items[i], source.metadata(window))
            if not store_tokens:
                tokens_done = row_done  # no token file to pool from: a missing row is encoded
            (finished if tokens_done and row_done else to_pool if tokens_done else pending).append(i)
        return finished, to_pool, pending

    def signature(self, source: WindowSource, window) -> RunSignature:
        meta = source.metadata(window)
        return RunSignature.of_run(self.encoder, input=source.input_name, frames=meta["frame_numbers"],
                                   sample_fps=meta.get("sample_fps"))

    @staticmethod
    def _check_same_frames(table: TableWriter, item: str, meta: dict) -> None:
        """A table row of this window written for other frames (another --frame_step, range or stride)
        would be skipped as done: refuse, as for token files."""
        found = table.frames_of(item)
        expected = (meta["start_frame"], meta["end_frame"])
        if found is not None and tuple(found) != expected:
            raise ConfigError(f"{table.dir}: row {item} written by another run: frames {found[0]}..{found[1]} "
                              f"(now {expected[0]}..{expected[1]}); use another table folder or pass --overwrite")

    # ------------------------------------------------------------------ encoding
    def _encode(self, run: _Pass, pending: list[int], batch_size: int) -> None:
        self._load_weights()  # before the DataLoader's workers start, as the encoder itself was
        source, summary = run.source, run.summary
        # one grid per batch: with `full`, windows are batched by frame size (a video has one)
        batches = batches_by_key([self.encoder.spatial.batch_key(source.sizes[i] if source.sizes else None)
                                  for i in pending], batch_size)
        if isinstance(source.dataset, VideoWindowDataset):  # each worker's decoder reads its windows in order
            batches = worker_order(batches, self.num_workers)
        # A DataLoader per input: its workers hold this input's dataset (a decoder per video), and an
        # input's windows are sorted and claimed before its loader starts (bench/PERFORMANCE.md, issue 23).
        loader = DataLoader(Subset(source.dataset, pending), batch_sampler=batches, num_workers=self.num_workers,
                            collate_fn=collate_windows, worker_init_fn=worker_init,
                            pin_memory=self.encoder.device.type == "cuda")
        start = time.perf_counter()
        # files, rows and manifest lines are written on one background thread, in order: the model
        # never waits for an fsync; all is flushed at the end of the input, and on an error
        with tqdm(total=len(pending), unit="win", desc=Path(source.name).name, disable=None) as bar, \
                decoding_workers(self.num_workers), BackgroundWriter(WRITE_QUEUE_BATCHES, name="window-writer") as writes:
            for batch in loader:
                for k, error in batch["errors"]:  # items carry their index into the windows
                    logger.error("%s window %d: %s", source.name, k, error)
                    writes.submit(run.writer.log, run.name(k), run.files.window(k).name, "failed", error)
                    summary["failed"] += 1
                if batch["clips"] is not None:
                    self._encode_batch(run, batch, writes)
                bar.update(len(batch["windows"]) + len(batch["errors"]))
        elapsed = time.perf_counter() - start
        summary["encode_s"] = elapsed  # the log line's figure, kept for the pipeline's timings
        logger.info("%s: %d windows written, %d skipped, %d failed in %.1f s (%.2f windows/s)", source.name,
                    summary["ok"], summary["skipped"], summary["failed"], elapsed, summary["ok"] / max(elapsed, 1e-9))

    def _encode_batch(self, run: _Pass, batch: dict, writes: BackgroundWriter) -> None:
        claims = ExitStack()  # each window's claim, held from encode to save (and, for table rows, ...)
        with ExitStack() as on_error:
            on_error.push(claims)
            keep = self._claim(run, batch["windows"], claims)
            # all kept (the usual case): the batch itself, still in the DataLoader's pinned memory
            clips = batch["clips"] if len(keep) == len(batch["windows"]) else batch["clips"][keep]
            feats = self.encoder.encode(clips) if keep else []  # [B, N, D] fp16
            if keep:  # inf/NaN (an fp16 overflow) stops the run before anything of the batch is stored
                self.encoder.check_finite(feats, [run.name(batch["windows"][j]) for j in keep])
            records = [(batch["windows"][j], self.window_record(run.source, batch["windows"][j], f,
                                                                batch["image_hw"][j]))
                       for j, f in zip(keep, feats)]
            on_error.pop_all()  # encoded: the claims go with the write job
        writes.submit(self._write_windows, run, records, claims)

    def _write_windows(self, run: _Pass, records: list[tuple[int, dict]], claims: ExitStack) -> None:
        """On the writer thread: a batch's files, rows and manifest lines, in order; its claims released
        after its files (or, for table rows, once the part holding them is written)."""
        with ExitStack() as release:
            if run.writer.table is not None:
                self._held.enter_context(claims)  # ... until the part holding the rows is written
            else:
                release.enter_context(claims)
            for k, record in records:
                if run.writer.write_window(record, run.files.window(k), self.settings.fmt, run.name(k)):
                    self._held.close()  # rows on disk: the claims can go
                run.summary["ok"] += 1

    def _claim(self, run: _Pass, indices: list[int], held: ExitStack) -> list[int]:
        """Positions in the batch of the windows this process claims and still has to write.

        The claim comes first, then the look at the file and the table: a process finishing a
        window writes its file and its row before it lets the claim go, so what a claim holder
        sees is final (looking first, another process could finish the window in between, and
        the window would be written twice, its row too)."""
        table = run.writer.table
        claimed = [held.enter_context(claim_output(run.files.window(k))) for k in indices]
        if table is not None and any(claimed):
            table.refresh()  # parts other processes wrote before the claims
        keep = []
        for j, (k, mine) in enumerate(zip(indices, claimed)):
            path = run.files.window(k)
            done_elsewhere = ((not run.writer.store_tokens or is_complete(path))
                              and (table is None or table.has(run.items[k])))
            if mine and (self.overwrite or not done_elsewhere):
                keep.append(j)
            else:  # another process over the same tree has it, or just finished it
                run.writer.log(run.name(k), path.name, "skipped", "written by another process")
                run.summary["skipped"] += 1
        return keep

    def window_record(self, source: WindowSource, k: int, features, image_hw: tuple[int, int]) -> dict:
        """A window's feature-file record: its tokens, the model's description and its metadata."""
        window = source.windows[k]
        return {
            "features": features,
            "shape": list(features.shape),
            "dtype": "float16",
            "model_info": self.encoder.describe(self.window, image_hw),
            "metadata": {
                "window_idx": window.index,
                **source.metadata(window),
                "num_padded_frames": window.num_padded,
                **self.encoder.spatial.metadata(self.window, *image_hw),  # grid, covered box
                "model": self.model_name,
                "extraction_timestamp": datetime.now(timezone.utc).isoformat(),
            },
        }
