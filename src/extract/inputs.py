"""A window run over several inputs (`vjepa2_sequential_extractor.py`): the inputs named on the
command line, which shard takes which input (whole inputs balanced by window counts, or every
input's windows shared out), one folder per input, and one bad input recorded while the run goes on."""
from __future__ import annotations

import logging
from pathlib import Path

from src import guards, sharding
from src.errors import ConfigError, ModelLoadError, OutputWriteError, TableConfigError
from src.extract import layout, window_sources
from src.extract.windows_run import WindowRun
from src.features import Manifest
from src.inference import FeatureOverflowError

logger = logging.getLogger(__name__)


def check_inputs(frame_dirs: list[str], video_entries: list[str]) -> list[tuple[str, Path]]:
    """(kind, path) of each input, each file or folder once (`unique_inputs`); those named on the
    command line must exist (list entries may fail alone)."""
    inputs = unique_inputs([("frames", Path(d)) for d in frame_dirs]
                           + [("video", v) for v in window_sources.expand_videos(video_entries)])
    if not inputs:
        raise ConfigError("nothing to do: give --frame_dir or --video")
    for kind, path in inputs:
        if kind == "frames" and not path.is_dir():
            raise FileNotFoundError(f"{path}: frame directory not found")
    for entry in video_entries:
        if Path(entry).suffix.lower() not in window_sources.VIDEO_LIST_SUFFIXES and not Path(entry).is_file():
            raise FileNotFoundError(f"{entry}: video not found")
    return inputs


def unique_inputs(inputs: list[tuple[str, Path]]) -> list[tuple[str, Path]]:
    """The inputs with each file or folder kept once, as first named: `a.mp4`, `./a.mp4`,
    `x/../a.mp4` and a link to it are one input (encoding it twice would write two folders of
    the same windows). The repeats are said in one line."""
    first: dict[Path, Path] = {}
    kept, repeats = [], []
    for kind, path in inputs:
        key = path.resolve()
        if key in first:
            repeats.append(str(path) if str(path) == str(first[key]) else f"{path} (= {first[key]})")
            continue
        first[key] = path
        kept.append((kind, path))
    if repeats:
        shown = ", ".join(repeats[:3]) + (f", … ({len(repeats) - 3} more)" if len(repeats) > 3 else "")
        logger.warning("%d input(s) named more than once, each read once: %s", len(repeats), shown)
    return kept


def check_outputs(run: WindowRun, inputs: list[tuple[str, Path]], output_dirs: list[Path]) -> None:
    """Refuse (ConfigError), before any work, an output folder or table folder that is one of the
    inputs (window files or table parts would land among the frames); then open the table, so a
    damaged or foreign part in it is named (InputError) before any input is read."""
    flags = {"frames": "--frame_dir", "video": "--video"}
    outputs = [(f"the output folder of {path}" if len(inputs) > 1 else "--output_dir", out)
               for (_, path), out in zip(inputs, output_dirs)]
    if run.store != "tokens":
        outputs.append(("--table_dir", run.settings.table_dir or layout.default_table_dir(output_dirs[0])))
    guards.refuse_folder_over_input(outputs, [(flags[kind], path) for kind, path in inputs])
    if run.store != "tokens":
        run.table(output_dirs[0])


def input_owners(run: WindowRun, inputs: list[tuple[str, Path]], *, first_frame: int | None = None,
                 last_frame: int | None = None, frame_step: int = 1,
                 sample_fps: float | None = None) -> tuple[list[int], list[bool]]:
    """(the shard that owns each input, whether that shard takes the input whole).

    With at least as many inputs as shards each readable input goes whole to one shard, balanced
    by window counts (every shard computes the same split from file names and video headers).
    Otherwise, and for inputs that show no window (unreadable, too short), every shard takes its
    share of the input's windows, and the input's position names the one shard that records it if
    it fails.
    """
    index, count = run.settings.shard
    owners, whole = [position % count for position in range(len(inputs))], [False] * len(inputs)
    if count == 1 or len(inputs) < count:
        return owners, whole
    counts = [window_sources.window_count(kind, path, run.settings.plan, frame_pattern=run.settings.frame_pattern,
                                          first_frame=first_frame, last_frame=last_frame, frame_step=frame_step,
                                          sample_fps=sample_fps)
              for kind, path in inputs]
    readable = [i for i, c in enumerate(counts) if c > 0]
    for i, owner in zip(readable, sharding.balance_by_weight([counts[i] for i in readable], count)):
        owners[i], whole[i] = owner, True
    mine = [i for i in readable if owners[i] == index]
    logger.info("sharding by input: shard %d/%d takes %d of %d inputs whole (%d of %d windows)", index, count,
                len(mine), len(inputs), sum(counts[i] for i in mine), sum(counts))
    return owners, whole


def run_inputs(run: WindowRun, inputs: list[tuple[str, Path]], output_root: Path, *, first_frame: int | None = None,
               last_frame: int | None = None, frame_step: int = 1, video_backend: str = "auto",
               sample_fps: float | None = None) -> tuple[dict, int]:
    """Each input of this shard in turn (`input_owners`), into its folder (`layout.input_output_dirs`);
    returns the window totals and the number of inputs that failed. Outputs and the table are
    checked first (`check_outputs`). One bad input is recorded and the
    run goes on; a full disk, a write error, no model, a table of another run or inf/NaN features stop
    it (finished outputs stay intact)."""
    totals, failed_inputs = {"ok": 0, "skipped": 0, "failed": 0}, 0
    shard = run.settings.shard
    output_dirs = layout.input_output_dirs(output_root, inputs)
    check_outputs(run, inputs, output_dirs)
    owners, whole_inputs = input_owners(run, inputs, first_frame=first_frame, last_frame=last_frame,
                                        frame_step=frame_step, sample_fps=sample_fps)
    for position, ((kind, path), out) in enumerate(zip(inputs, output_dirs)):
        whole = whole_inputs[position]
        if whole and owners[position] != shard[0]:
            continue  # another shard's input
        try:
            if kind == "frames":
                summary = run.process_frame_directory(path, out, first_frame, last_frame, whole_input=whole)
            else:
                summary = run.process_video(path, out, frame_step=frame_step, first_frame=first_frame,
                                            last_frame=last_frame, whole_input=whole, backend=video_backend,
                                            sample_fps=sample_fps)
        except (OutputWriteError, ModelLoadError, TableConfigError, FeatureOverflowError):
            raise
        except (ValueError, OSError) as exc:  # one bad input: record, report, go on
            if len(inputs) == 1 and isinstance(exc, ConfigError):
                raise
            message = str(exc) if str(exc).startswith(str(path)) else f"{path}: {exc}"
            # Every shard meets a broken input the same way (it fails before its windows are
            # split): one shard, its owner, records and counts it for all.
            if owners[position] != shard[0]:
                logger.info("%s (recorded by shard %d/%d)", message, owners[position], shard[1])
                continue
            logger.error("%s", message)
            out.mkdir(parents=True, exist_ok=True)
            with Manifest(layout.manifest_path(out)) as manifest:
                extra = {"shard": f"{shard[0]}/{shard[1]}", "sharded_by": "input" if whole else "windows"}
                manifest.record(str(path), None, "failed", str(exc), extra=extra)
            failed_inputs += 1
            continue
        for key in totals:
            totals[key] += summary[key]
    return totals, failed_inputs
