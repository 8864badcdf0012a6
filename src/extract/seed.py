"""The seed's classes, `VJEPA2Extractor` (images) and `SequentialVJEPA2Extractor` (windows), with the
keyword arguments they have always documented (README, copied lab scripts): thin facades that build
`EncoderOptions` (and `WindowRunOptions`) and hand them to `ImageExtractor` / `WindowRun`. The
scripts re-export them under their old import paths."""
from __future__ import annotations

from pathlib import Path

from src import embeddings_table, sharding
from src.extract.images import ImageExtractor, check_image_frames
from src.extract.window_sources import WindowPlan
from src.extract.windows_run import WindowRun, WindowRunOptions
from src.frames import DEFAULT_FRAME_PATTERN
from src.models.weights import DEFAULT_HUB_MODEL
from src.options import EncoderOptions, dtype_name
from src.spatial import DEFAULT_MAX_TOKENS


class VJEPA2Extractor(ImageExtractor):
    """Image → V-JEPA 2 features: one frame through a 2.1 model's image path, or the image
    repeated to ``image_frames`` frames through the video path.

    Args:
        model_name: model spec (hub id, transformers directory, original .pt, ``random:<arch>``).
        device: "auto", "cpu", "cuda" (the local rank's GPU) or "cuda:N".
        use_fp16: compute in fp16 (the seed's flag; the same as ``dtype="fp16"``).
        image_frames: frames per image: 1 (2.1's image path; the default for 2.1 models) or
            even ≥ 2, the image repeated along time (16 → 8 temporal tokens, 2 → 1; the
            default for 2.0 models is 16). None: the model's default.
        dtype: "auto", "fp32", "bf16" or "fp16"; None → "fp16" if use_fp16 else "auto" (a
            ``dtype`` other than "fp16" with ``use_fp16=True`` is a ValueError).
        img_size, checkpoint_key, compile, layers, num_heads, spatial, short_side, max_tokens:
            see `src.options.EncoderOptions`.
    """

    def __init__(self, model_name: str = DEFAULT_HUB_MODEL, device: str = "auto",
                 use_fp16: bool = False, image_frames: int | None = None, dtype: str | None = None,
                 img_size: int | None = None, checkpoint_key: str | None = None, compile: bool = False,
                 layers: str | list[int] = "last", num_heads: int | None = None, spatial: str = "center",
                 short_side: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS):
        check_image_frames(image_frames)
        options = EncoderOptions(model=model_name, device=sharding.local_device(device),
                                 dtype=dtype_name(dtype, use_fp16), img_size=img_size, checkpoint_key=checkpoint_key,
                                 compile=compile, layers=layers, num_heads=num_heads, spatial=spatial,
                                 short_side=short_side, max_tokens=max_tokens)
        super().__init__(options, image_frames)


class SequentialVJEPA2Extractor(WindowRun):
    """Sliding-window extraction over frame directories and video files.

    Args:
        model_name: model spec (hub id, local directory, original .pt, random:<arch>).
        device: "auto", "cpu", "cuda", "cuda:N".
        use_fp16: compute in fp16 (the seed's flag; the same as ``dtype="fp16"``).
        dtype: "auto" (bf16 on CUDA, fp32 on CPU), "fp32", "bf16", "fp16"; None → "fp16" if
            use_fp16 else "auto" (a dtype other than "fp16" with ``use_fp16=True`` is an error).
        window: frames per window (even).
        stride: frames between window starts (default: window, i.e. no overlap).
        tail: "pad" (repeat the last frame, recorded) or "drop" (warned) for the last partial window.
        batch_size: windows per forward pass.
        num_workers: DataLoader worker processes decoding and preprocessing ahead of the model.
        fmt: "pt" or "safetensors".
        overwrite: recompute outputs that already exist.
        frame_pattern: regex with one group capturing the frame number in a file name.
        allow_gaps: proceed over missing frame numbers (reported either way).
        shard: (index, count) of the windows this process handles.
        store: "tokens" (feature files), "pooled" (rows of the embeddings table) or "both".
        pooling: how the table's vectors are made (default: mean over tokens, L2-normalised).
        table_dir: the embeddings table folder (default: `embeddings/` in the first output folder).
        part_rows: table rows per Parquet part file.
        img_size, checkpoint_key, compile, layers, num_heads, spatial, short_side, max_tokens:
            see `src.options.EncoderOptions`.
    """

    def __init__(self, model_name: str = DEFAULT_HUB_MODEL, device: str = "auto", use_fp16: bool = False,
                 dtype: str | None = None, img_size: int | None = None, window: int = 16,
                 stride: int | None = None, batch_size: int = 1, num_workers: int | None = None,
                 tail: str = "pad", fmt: str = "pt", overwrite: bool = False,
                 frame_pattern: str = DEFAULT_FRAME_PATTERN, allow_gaps: bool = False,
                 shard: tuple[int, int] = (0, 1), checkpoint_key: str | None = None, compile: bool = False,
                 layers: str | list[int] = "last", num_heads: int | None = None, spatial: str = "center",
                 short_side: int | None = None, max_tokens: int | None = DEFAULT_MAX_TOKENS,
                 store: str = "tokens", pooling: embeddings_table.Pooling | None = None, table_dir=None,
                 part_rows: int = embeddings_table.DEFAULT_PART_ROWS):
        settings = WindowRunOptions(
            plan=WindowPlan(window, stride, tail), batch_size=batch_size, num_workers=num_workers, fmt=fmt,
            overwrite=overwrite, frame_pattern=frame_pattern, allow_gaps=allow_gaps, shard=tuple(shard),
            store=store, pooling=pooling or embeddings_table.Pooling(),
            table_dir=None if table_dir is None else Path(table_dir), part_rows=part_rows)
        options = EncoderOptions(model=model_name, device=device, dtype=dtype_name(dtype, use_fp16),
                                 img_size=img_size, checkpoint_key=checkpoint_key, compile=compile, layers=layers,
                                 num_heads=num_heads, spatial=spatial, short_side=short_side, max_tokens=max_tokens)
        super().__init__(options, settings)
