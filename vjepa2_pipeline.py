#!/usr/bin/env python
"""Frames (or a video) → V-JEPA 2 features → one UMAP/PCA projection for the run → pictures → videos → package.

    python vjepa2_pipeline.py --frame_dir examples/frames --output_dir outputs/example --model random:vit_large \
        --umap_visualization --pca_visualization --video_animation --mp4 --gif --annotate

Extraction runs in-process (the sequential extractor, resumable); one projection per method is
fitted once on a sample of all tokens of the run, so colours agree across windows and time; every
source frame becomes exactly one animation frame, its token's colours overlaid on the region the
features cover (the centre crop, or the whole frame with `--spatial full`). Output: features/,
projection/ (the fitted projections), <method>_projection/, <method>_overlay/, original/, videos/,
package/ (metadata.json + the files) and <name>_package.zip. A rerun into the same folder keeps
whatever is finished and still matches its inputs and settings (features, projections, pictures,
package); --overwrite redoes everything.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from src import cli, embeddings_table
from src.animation import PictureOptions, render, video_fps, warn_leftovers
from src.extract.windows_run import WindowRun, WindowRunOptions
from src.features import outputs_written
from src.frames import DEFAULT_FRAME_PATTERN
from src.jit_cache import prefetch_umap
from src.options import EncoderOptions
from src.package import library_versions, write_package
from src.visualize import digest, finished_outputs, fit_projections, projection_keys, record_outputs

logger = logging.getLogger("vjepa2_pipeline")


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, parents=[cli.common_parser(), cli.spatial_parser(), cli.video_parser(sampling=True)],
                                formatter_class=cli.HelpFormatter)
    src = p.add_argument_group("input and extraction")
    src.add_argument("--frame_dir", default=None, help="folder of numbered frames")
    src.add_argument("--video", default=None, help="a video file instead of a frame folder")
    src.add_argument("--output_dir", required=True)
    src.add_argument("--first_frame", type=int, default=None,
                     help="first frame: its number in a folder, its index (from 0) in a video")
    src.add_argument("--last_frame", type=int, default=None, help="last frame, inclusive (as --first_frame)")
    src.add_argument("--frame_pattern", default=DEFAULT_FRAME_PATTERN)
    src.add_argument("--frame_step", type=int, default=1, help="video: use every n-th frame")
    src.add_argument("--window", type=int, default=16)
    src.add_argument("--stride", type=int, default=None, help="frames between windows (default: window)")
    src.add_argument("--batch_size", type=int, default=1)
    src.add_argument("--num_workers", type=int, default=None)
    src.add_argument("--allow_gaps", action="store_true")
    src.add_argument("--overwrite", action="store_true",
                     help="redo everything: recompute feature files already in OUTPUT_DIR/features (kept by default "
                          "when they match this run's model, crop, --spatial and frames; a mismatch stops the run), "
                          "refit the projection and redraw the pictures (kept by default when features and settings match)")
    vis = p.add_argument_group("pictures")
    vis.add_argument("--umap_visualization", action="store_true",
                     help="UMAP PNGs per temporal token (with no picture or video flag at all: UMAP and PCA)")
    vis.add_argument("--pca_visualization", action="store_true", help="PCA (component 1, turbo) PNGs per token")
    vis.add_argument("--original_images", action="store_true", help="also save the source frames as PNG")
    vis.add_argument("--alpha", type=float, default=0.5, help="overlay opacity in [0, 1]")
    vis.add_argument("--annotate", action="store_true", help="frame number / time on each frame")
    vis.add_argument("--umap_sample", type=int, default=20000, help="tokens sampled to fit the projection")
    vis.add_argument("--n_neighbors", type=int, default=15)
    vis.add_argument("--min_dist", type=float, default=0.1)
    vis.add_argument("--metric", default="cosine")
    vis.add_argument("--seed", type=int, default=0)
    vid = p.add_argument_group("videos")
    vid.add_argument("--video_animation", action="store_true", help="make videos: of the methods chosen for pictures (--umap/--pca_visualization), else UMAP and PCA")
    vid.add_argument("--video_umap_visualization", action="store_true")
    vid.add_argument("--video_pca_visualization", action="store_true")
    vid.add_argument("--video_stacked_visualization", action="store_true", help="original above, overlays below")
    vid.add_argument("--no_independent_videos", action="store_true", help="one side-by-side video of all views")
    vid.add_argument("--video_fps", type=float, default=None, help="default: the video's fps/frame_step, else 10")
    vid.add_argument("--mp4", action="store_true", help="H.264 MP4 (default if neither --mp4 nor --gif)")
    vid.add_argument("--gif", action="store_true")
    # pictures need the token files, so the table comes with them (--store both) or not at all
    embeddings_table.add_table_arguments(p, "OUTPUT_DIR/embeddings", stores=("tokens", "both"))
    pkg = p.add_argument_group("package")
    pkg.add_argument("--no_embeddings", action="store_true", help="leave the feature files out of the package")
    return p


def plan(args) -> dict:
    """Which methods, pictures, video views and formats the flags ask for (defaults filled in)."""
    videos = {"umap": args.video_umap_visualization, "pca": args.video_pca_visualization,
              "stacked": args.video_stacked_visualization}
    pngs = [m for m, on in (("umap", args.umap_visualization), ("pca", args.pca_visualization)) if on]
    if args.video_animation and not any(videos.values()):
        # videos of the methods asked for as pictures, both if none (a UMAP fit costs minutes)
        for m in pngs or ["umap", "pca"]:
            videos[m] = True
    views = [v for v, on in videos.items() if on]
    if not pngs and not views:
        pngs = ["umap", "pca"]
    methods = sorted({*pngs, *(m for m in ("umap", "pca") if videos[m])}, key=("umap", "pca").index)
    if videos["stacked"] and not methods:
        methods = ["umap"]
    formats = [f for f, on in (("mp4", args.mp4), ("gif", args.gif)) if on] or ["mp4"]
    return {"methods": methods, "pngs": pngs, "views": views, "formats": formats if views else []}


def check_args(args) -> None:
    if bool(args.frame_dir) == bool(args.video):
        raise cli.UsageError("give exactly one of --frame_dir or --video")
    if not 0.0 <= args.alpha <= 1.0:
        raise cli.UsageError(f"--alpha must be in [0, 1], got {args.alpha}")
    if args.video_fps is not None and args.video_fps <= 0:
        raise cli.UsageError(f"--video_fps must be positive, got {args.video_fps}")
    if args.umap_sample < 10:
        raise cli.UsageError(f"--umap_sample must be at least 10, got {args.umap_sample}")


def packaged_key(package_dir: Path) -> str | None:
    """The package_key of the package in `package_dir` (None if there is none, or it is unreadable)."""
    try:
        return json.loads((package_dir / "metadata.json").read_text()).get("package_key")
    except (OSError, ValueError):
        return None


def extract(extractor: WindowRun, args, out: Path) -> dict:
    if args.frame_dir:
        return extractor.process_frame_directory(args.frame_dir, out / "features", args.first_frame, args.last_frame)
    try:  # the extractor opens the video before it loads the model
        return extractor.process_video(args.video, out / "features", frame_step=args.frame_step,
                                       first_frame=args.first_frame, last_frame=args.last_frame,
                                       backend=args.video_backend, sample_fps=args.sample_fps)
    except ValueError as exc:  # missing, empty or unreadable: the one input, so nothing to do
        if isinstance(exc, cli.UsageError):
            raise
        raise cli.UsageError(str(exc)) from exc


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    cli.setup_logging(args.debug)
    check_args(args)
    todo = plan(args)
    out = cli.check_output_dir(args.output_dir)
    timings = {}

    if args.frame_dir and not Path(args.frame_dir).is_dir():
        raise FileNotFoundError(f"{args.frame_dir}: frame directory not found")

    if "umap" in todo["methods"] and (args.overwrite or not (out / "projection" / "pictures.json").is_file()):
        prefetch_umap()  # its few seconds of importing overlap extraction instead of delaying the pictures
    start = time.perf_counter()
    extractor = WindowRun(EncoderOptions.from_args(args), WindowRunOptions.from_args(args, output_dir=out))
    with embeddings_table.closing(extractor):  # the table's last rows are written however extraction ends
        summary = extract(extractor, args, out)
    timings["extraction_s"] = time.perf_counter() - start  # model build and input scan included
    timings["windows_s"] = summary.get("encode_s", 0.0)  # the window loop alone ("windows written … in X s")
    feature_files = [p for p in summary["outputs"] if p.exists()]
    if not feature_files:
        raise cli.UsageError(f"no windows could be extracted from {args.frame_dir or args.video}")

    fps = video_fps(feature_files, args.video_fps, args.frame_step)
    keys = projection_keys(feature_files, todo["methods"], args.umap_sample, args.seed, args.n_neighbors,
                           args.min_dist, args.metric)
    pictures_key = digest({"projections": keys, "plan": todo, "fps": fps, **{k: getattr(args, k) for k in (
        "alpha", "annotate", "original_images", "no_independent_videos")}})
    record = out / "projection" / "pictures.json"
    pictures = None if args.overwrite else finished_outputs(record, pictures_key, out)
    if pictures is not None:
        logger.info("pictures and videos: all %d already drawn with these features and settings, kept (%s)",
                    len(pictures), record)
    else:
        record.unlink(missing_ok=True)  # from here until the new record the pictures are unfinished
        start = time.perf_counter()
        with outputs_written(out):
            projections = fit_projections(feature_files, todo["methods"], args.umap_sample, args.seed,
                                          args.n_neighbors, args.min_dist, args.metric, save_dir=out / "projection",
                                          overwrite=args.overwrite)
        timings["projection_fit_s"] = time.perf_counter() - start
        logger.info("projection ready in %.1f s; drawing %s", timings["projection_fit_s"],
                    " + ".join([f"{m} PNGs" for m in todo["pngs"]] + [f"{v} video" for v in todo["views"]])
                    or "nothing")
        start = time.perf_counter()
        with outputs_written(out):
            looks = PictureOptions(args.alpha, args.annotate, args.original_images, args.no_independent_videos)
            pictures = render(feature_files, projections, todo, out, looks, fps, timings)
            record_outputs(record, pictures_key, pictures, out)
        timings["render_s"] = time.perf_counter() - start
        logger.info("%d pictures/videos written in %.1f s (%.1f s of it projecting tokens to colours)",
                    len(pictures), timings["render_s"], timings["transform_s"])

    warn_leftovers(out, pictures)
    files = {str(p.relative_to(out)): p for p in pictures}
    files.update({f"projection/{p.name}": p for p in sorted((out / "projection").glob("*.npz"))
                  if p.stem in todo["methods"]})
    if not args.no_embeddings:
        files.update({f"features/{p.name}": p for p in feature_files})
        if args.store != "tokens":
            files.update({f"embeddings/{p.name}": p for p in embeddings_table.part_files(extractor.table_dir)})
    metadata = {
        "inputs": {"frame_dir": args.frame_dir, "video": args.video, "first_frame": args.first_frame,
                   "last_frame": args.last_frame, "frame_step": args.frame_step,
                   "sample_fps": args.sample_fps},
        "model": args.model, "model_info": extractor.encoder.describe(args.window),
        "random_weights": extractor.encoder.architecture.is_random,
        "flags": {k: v for k, v in vars(args).items()}, "plan": todo, "video_fps": fps,
        "windows": {"total": summary["windows"], "written": summary["ok"], "skipped": summary["skipped"],
                    "failed": summary["failed"]},
        "library_versions": library_versions(), "timings_s": timings,
    }
    # The package's own identity: the files it holds (as they are on disk) and what they show.
    metadata["package_key"] = digest({"files": {name: [p.stat().st_size, p.stat().st_mtime_ns]
                                                for name, p in files.items()},
                                      **{k: metadata[k] for k in ("inputs", "model", "plan", "video_fps")}})
    zip_path = out / f"{out.name}_package.zip"
    if not args.overwrite and zip_path.is_file() and packaged_key(out / "package") == metadata["package_key"]:
        logger.info("package: %s and %s already hold these files, kept", out / "package", zip_path)
    else:
        with outputs_written(out):
            write_package(out / "package", files, metadata, zip_path=zip_path)
    print(f"pipeline done: {summary['ok'] + summary['skipped']} windows, {len(pictures)} pictures/videos, "
          f"package {out / 'package'} and {out / f'{out.name}_package.zip'}")
    if extractor.encoder.architecture.is_random:
        print("NOTE: random-weight model: the colours show random features, not V-JEPA 2's.")
    return cli.EXIT_PARTIAL if summary["failed"] else cli.EXIT_OK


if __name__ == "__main__":
    sys.exit(cli.run_script(main))
