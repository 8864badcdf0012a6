"""The packaged output of a pipeline run: a folder with the deliverables + metadata.json, and its zip.

The package folder holds hard links to the run's files (copies where links are impossible), so
packaging costs no extra disk on one filesystem, and an index.html (src/pages) that shows the run's
settings, videos and pictures and links every file by relative path (it works from the unpacked
zip). `metadata.json` lists every packaged file, index.html included; the zip holds exactly those
files plus metadata.json. Both are written atomically.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import re
import shutil
import sys
import zipfile
from importlib import metadata as importlib_metadata
from pathlib import Path

from src.features import load_features
from src.pages import write_index

logger = logging.getLogger(__name__)

REPORTED_LIBRARIES = ("torch", "numpy", "transformers", "huggingface_hub", "safetensors", "pillow", "decord", "av",
                      "imageio", "imageio-ffmpeg", "umap-learn", "scikit-learn", "matplotlib")


def library_versions() -> dict:
    versions = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in REPORTED_LIBRARIES:
        try:
            versions[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def window_originals(files: dict[str, Path]) -> dict[str, list[str]]:
    """Each packaged window's original frame pictures (``original/frame_<id>.png``), in the window's
    frame order, from the frame numbers in its packaged feature file (read without its tensors)."""
    originals = {}
    for name in files:
        found = re.fullmatch(r"original/frame_0*(\d+)\.png", name)
        if found:
            originals[int(found.group(1))] = name
    windows = {}
    for name, path in files.items():
        found = re.fullmatch(r"features/(window_\d+)\.(pt|safetensors)", name)
        if originals and found:
            try:
                frames = load_features(path)["metadata"].get("frame_numbers") or []
            except (OSError, ValueError) as exc:
                logger.warning("%s: no frame numbers for the index page (%s)", path, exc)
                continue
            windows[found.group(1)] = [originals[i] for i in dict.fromkeys(frames) if i in originals]
    return windows


def write_package(package_dir: Path, files: dict[str, Path], metadata: dict, zip_path: Path | None = None) -> dict:
    """Build `package_dir` from `{relative name: source file}` plus metadata.json; zip it if asked.

    Returns the metadata written (with the `files` list: name and size of each packaged file).
    """
    package_dir = Path(package_dir)
    if package_dir.exists():
        shutil.rmtree(package_dir)  # a rerun replaces the package, never mixes two runs
    package_dir.mkdir(parents=True)
    listed = []
    for name in sorted(files):
        src = Path(files[name])
        _link_or_copy(src, package_dir / name)
        listed.append({"name": name, "bytes": src.stat().st_size})
    index = write_index(package_dir, f"Package {package_dir.absolute().parent.name}: {metadata.get('model', '')}",
                        {k: v for k, v in metadata.items() if k != "files"}, [*files, "metadata.json"],
                        window_frames=window_originals(files))
    listed.append({"name": index.name, "bytes": index.stat().st_size})
    metadata = {**metadata, "files": listed}
    tmp = package_dir / ".metadata.json.tmp"
    tmp.write_text(json.dumps(metadata, indent=2, default=str) + "\n")
    os.replace(tmp, package_dir / "metadata.json")
    if zip_path is not None:
        zip_path = Path(zip_path)
        tmp_zip = zip_path.with_name(f".{zip_path.name}.tmp")
        try:
            with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.write(package_dir / "metadata.json", "metadata.json")
                for entry in listed:
                    # features and videos are already compressed: store them, deflate the rest
                    stored = entry["name"].endswith((".pt", ".safetensors", ".mp4", ".gif", ".png", ".jpg"))
                    zf.write(package_dir / entry["name"], entry["name"],
                             compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
            os.replace(tmp_zip, zip_path)
        except OSError as exc:  # e.g. a full disk: no half-written zip left, and the zip named
            tmp_zip.unlink(missing_ok=True)
            raise OSError(exc.errno, f"{zip_path}: cannot write the package zip ({exc.strerror or exc})",
                          str(zip_path)) from exc
        logger.info("package: %s (%d files) and %s", package_dir, len(listed), zip_path)
    return metadata
