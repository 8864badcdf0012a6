"""What every script shares: argument groups, logging set-up, device/dtype, exit codes, errors.

Exit codes (documented in the README):
  0  everything done
  1  unexpected internal error (traceback with --debug)
  2  bad arguments or configuration (nothing was processed)
  3  finished, but some inputs failed (see the manifest / log)
  4  an output could not be written (disk full, permissions): finished outputs are intact,
     rerunning the same command resumes
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

from src.device import resolve_device, resolve_dtype  # noqa: F401  (re-exported for the scripts)
from src.errors import ConfigError, InputError, OutputWriteError, ToolkitError, UsageError  # noqa: F401
from src.models.kernel_choice import CPU_LINEAR_MODES

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_WRITE = 0, 1, 2, 3, 4

logger = logging.getLogger(__name__)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written (their examples keep their lines); every option with a help text
    and a real default (not None/False) shows that default, so no one has to read the code."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if ("%(default)" in text or "default:" in text or not action.option_strings
                or action.default in (None, False, argparse.SUPPRESS) or action.default == []):
            return text
        return f"{text} (default: %(default)s)"


def common_parser() -> argparse.ArgumentParser:
    """Flags every script takes: model, device, dtype, logging."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("model and device")
    group.add_argument("--model", default="facebook/vjepa2-vitg-fpc64-384",
                       help="model spec: hub id, local transformers directory, original .pt, or random:<arch> "
                            "(default: %(default)s, a 4 GB download on first use)")
    group.add_argument("--img_size", type=int, default=None,
                       help="crop size (default: from the model config; 256 for .pt files)")
    group.add_argument("--checkpoint_key", default=None,
                       help="entry of an original .pt to load (default: the one Meta's code reads: 'encoder' "
                            "for 2.0; 'ema_encoder' for 2.1 B/L, 'target_encoder' for 2.1 g/G)")
    group.add_argument("--layers", default="last", type=_layers_arg,
                       help="what is stored: last (the model's output), hierarchical (4 levels on channels, 4·D) "
                            "or block indices such as 2,5,8,11 (each level normed as the model's generation does)")
    group.add_argument("--num_heads", type=int, default=None,
                       help="attention heads of an original .pt whose head count its shapes cannot tell (default: "
                            "the released encoder of that width, e.g. 22 for 1408 wide; 16 for a vit_giant)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the encoder (first batch compiles for a while; see bench/PERFORMANCE.md)")
    group.add_argument("--cpu_linear", choices=CPU_LINEAR_MODES, default="auto",
                       help="CPU fp32 linears: fused oneDNN calls or plain nn.Linear; auto times both once per "
                            "machine and shape and keeps the faster (in ~/.cache/vjepa2/cpu_kernels.json)")
    add_device_arguments(group)
    return parser


def add_device_arguments(group: argparse._ActionsContainer) -> None:
    """--device, --dtype and --debug: also for scripts that choose no encoder (probe training)."""
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="compute dtype (auto: bf16 on GPUs with native bf16, else fp16; fp32 on CPU)")
    group.add_argument("--tf32", action="store_true",
                       help="fp32 matmuls on TF32 tensor cores (CUDA, Ampere or newer): much faster, ~1e-3 "
                            "relative change in fp32 results; ignored with a warning on a CPU")
    group.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")


def spatial_parser() -> argparse.ArgumentParser:
    """Flags of the extracting scripts choosing what part of each frame is encoded (src/spatial.py)."""
    from src.spatial import DEFAULT_MAX_TOKENS, SPATIAL_MODES  # src.spatial imports this module

    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("what part of each frame is encoded")
    group.add_argument("--spatial", choices=SPATIAL_MODES, default="center",
                       help="center: the original centre crop (--img_size square); full: the whole frame, short "
                            "side resized to --short_side, long side to the nearest multiple of the 16 px patch, "
                            "no crop (tokens grow with the frame's area)")
    group.add_argument("--short_side", type=int, default=None,
                       help="--spatial full: short side in pixels, a multiple of the patch (default: the crop size)")
    group.add_argument("--max_tokens", type=int, default=DEFAULT_MAX_TOKENS,
                       help="--spatial full: refuse, before any work, frames whose clips would have more tokens "
                            "than this (attention work grows with tokens²)")
    return parser


def video_parser(sampling: bool = False) -> argparse.ArgumentParser:
    """Flags of the scripts that read videos: the decoder; with `sampling`, frames chosen by time."""
    from src.media.video import VIDEO_BACKENDS

    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("video decoding")
    group.add_argument("--video_backend", choices=VIDEO_BACKENDS, default="auto",
                       help="decoder: auto (PyAV; decord where PyAV cannot open the file), pyav or decord; every "
                            "backend turns frames as the file's display matrix says (bench/decode.py)")
    if sampling:
        group.add_argument("--sample_fps", type=_positive_float, default=None,
                           help="sample F frames per second of video time (from presentation timestamps, "
                                "VFR-safe) instead of every --frame_step-th frame; --window and --stride "
                                "count sampled frames")
    return parser


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _layers_arg(text: str) -> str:
    from src.inference import parse_layers

    try:
        parse_layers(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"--layers {text!r}: ")) from None
    return text


def setup_logging(debug: bool = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


# Folders check_output_dir created in this process: a run refused with exit 2 removes those still
# empty, so a typo in a flag leaves no empty output folder behind.
_CREATED_DIRS: list[Path] = []


def _remove_created_empty_dirs() -> None:
    for directory in _CREATED_DIRS:  # deepest first: a parent goes once its child has
        try:
            directory.rmdir()  # only ever removes an empty folder
        except OSError:
            pass
    _CREATED_DIRS.clear()


def check_output_dir(output_dir: str | os.PathLike) -> Path:
    """Create `output_dir` and make sure files can be written there, before any work starts."""
    out = Path(output_dir)
    missing = [d for d in (out, *out.parents) if not d.exists()]  # deepest first
    try:
        out.mkdir(parents=True, exist_ok=True)
        _CREATED_DIRS.extend(missing)
        fd, probe = tempfile.mkstemp(prefix=".write_check_", dir=out)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UsageError(f"--output_dir {out}: cannot create or write there ({exc.strerror or exc})") from None
    return out


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call a script's main; known failures become one line on stderr and a documented exit code."""
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        return main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OutputWriteError as exc:
        if debug:
            raise
        print(f"error: {exc}; outputs finished so far are intact, rerun the same command to resume",
              file=sys.stderr)
        return EXIT_WRITE
    except (ConfigError, InputError, FileNotFoundError, NotADirectoryError) as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        _remove_created_empty_dirs()
        return EXIT_USAGE
    except Exception as exc:  # anything else is a bug or an environment failure
        if debug:
            raise
        print(f"error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_ERROR


def run_script(main: Callable[[list[str] | None], int]) -> int:
    """`run` for a script's `__main__` block, which exits with the code returned.

    The collector is frozen first: everything is written and closed by then, and the interpreter's
    last collections over torch's, scikit-learn's and numba's objects took ~0.5 s of every run
    (measured on the README job). Not for in-process callers, whose objects must stay collectable.
    """
    code = run(main)
    gc.freeze()
    return code
