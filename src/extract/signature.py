"""What a finished output must have been written with for a rerun to keep it: the run signature.

Built one way from the loaded encoder (`RunSignature.of_run`) and one way from a written record's
`model_info` and `metadata` (`RunSignature.of_record`), compared one way (`check_same_run`), for
image chunks and window files alike; the table's configuration (`table_config`) from the same facts.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from src.errors import ConfigError
from src.inference import ClipEncoder, stored_layers


@dataclass(frozen=True)
class RunSignature:
    """Fields left None in the expected signature are not compared: an image run has no input
    name or frame list (a chunk's keys are its inputs), a window run's frame list stands for its
    clip length."""

    model: str | None
    img_size: int | None
    spatial: str
    short_side: int | None  # `full` only
    layers: str | list[int] | None
    clip_frames: int | None = None
    input: str | None = None  # a window's input, by name (a copy on node-local scratch still resumes)
    frames: list | None = None  # a window's frame numbers
    sample_fps: float | None = None  # a video window's sampling rate (None: every --frame_step-th frame)

    @classmethod
    def of_run(cls, encoder: ClipEncoder, clip_frames: int | None = None, input: str | None = None,
               frames: list | None = None, sample_fps: float | None = None) -> "RunSignature":
        plan = encoder.spatial
        return cls(model=encoder.spec, img_size=encoder.crop, spatial=plan.mode,
                   short_side=plan.short_side if plan.mode == "full" else None,
                   layers=stored_layers({"output": encoder.output_kind, "layers": encoder.layer_indices}),
                   clip_frames=clip_frames, input=input, frames=frames, sample_fps=sample_fps)

    @classmethod
    def of_record(cls, model_info: dict | None, metadata: dict | None) -> "RunSignature":
        meta = metadata or {}
        info = model_info or meta.get("model_info") or {}
        spatial = meta.get("spatial", "center")  # files from before --spatial are centre crops
        source = meta.get("video_path") or meta.get("frame_dir")  # absent in image chunks and hand-made files
        return cls(model=meta.get("model") or info.get("model_name"), img_size=info.get("img_size"),
                   spatial=spatial, short_side=meta.get("short_side") if spatial == "full" else None,
                   layers=stored_layers(info), clip_frames=meta.get("image_frames", info.get("num_input_frames")),
                   input=Path(source).name if source else None, frames=meta.get("frame_numbers"),
                   sample_fps=meta.get("sample_fps"))

    def differences(self, found: "RunSignature") -> dict[str, tuple]:
        """{field: (found, expected)} of the fields this (expected) signature fixes and `found` differs in."""
        expected, written = asdict(self), asdict(found)
        if self.input is not None and written["input"] is None:
            written["input"] = self.input  # a hand-made file names no input: nothing to compare
        if self.spatial != "full" or written["spatial"] != "full":
            expected["short_side"] = written["short_side"] = None  # short_side means something in `full` only
        diff = {k: (written[k], v) for k, v in expected.items() if v is not None and written[k] != v}
        if self.frames is not None and written["sample_fps"] != expected["sample_fps"]:
            # a window run's sampling is part of it even where the frames chosen happen to coincide
            diff["sample_fps"] = (written["sample_fps"], expected["sample_fps"])
        return diff

    def check_same_run(self, found: "RunSignature", path: Path) -> None:
        """Refuse to keep `path`, written by another run (another input, model, crop, frames, layers,
        spatial mode): skipping it would mix the features of two runs in one folder."""
        diff = self.differences(found)
        if diff:
            def show(v):
                return f"{v[0]}..{v[-1]}" if isinstance(v, list) and v else repr(v)

            changed = ", ".join(f"{k} {show(a)} (now {show(b)})" for k, (a, b) in diff.items())
            raise ConfigError(f"{path}: written by another run: {changed}; use another --output_dir or pass "
                              f"--overwrite (that run: {self._shown(found)}; this run: {self._shown(self)})")

    def _shown(self, signature: "RunSignature") -> dict:
        return {k: v for k, v in asdict(signature).items() if getattr(self, k) is not None and k != "frames"}



def table_config(encoder: ClipEncoder, clip_frames: int, pooling_name: str) -> dict:
    """What the embeddings table's rows of a run share (`TableWriter.expect`), from the same facts
    as its run signature."""
    run = RunSignature.of_run(encoder, clip_frames)
    return {"model": run.model, "pooling": pooling_name, "img_size": run.img_size, "clip_frames": clip_frames,
            "spatial": run.spatial, "generation": encoder.architecture.generation, "output": encoder.output_kind,
            "layers": encoder.layer_indices}
