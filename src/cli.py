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
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Callable

import torch

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_WRITE = 0, 1, 2, 3, 4

logger = logging.getLogger(__name__)


class UsageError(ValueError):
    """Bad arguments or configuration: reported in one line, exit code 2."""


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
    group.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    group.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                       help="compute dtype (auto: bf16 on GPUs with native bf16, else fp16; fp32 on CPU)")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the encoder (first batch compiles for a while; see bench/PERFORMANCE.md)")
    group.add_argument("--debug", action="store_true", help="full tracebacks and debug logs")
    return parser


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


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device}: not a device (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise UsageError(f"--device {device}: this process sees {count} GPU(s), cuda:0..cuda:{count - 1}"
                             " (CUDA_VISIBLE_DEVICES renumbers them from 0)")
    return dev


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on a CUDA GPU that runs it natively (Ampere or newer; the model's training
    precision), fp16 on older GPUs (bf16 is emulated or missing there), fp32 on CPU (bf16 is
    slower there)."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        if torch.cuda.is_bf16_supported(including_emulation=False):
            return torch.bfloat16
        logger.warning("%s has no native bf16: using fp16 (--dtype fp32 if features come out inf/NaN)",
                       torch.cuda.get_device_name(device))
        return torch.float16
    return _DTYPES[dtype]


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
    from src.features import OutputWriteError
    from src.models.weights import CheckpointError, ModelSpecError

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
    except (UsageError, ModelSpecError, CheckpointError, FileNotFoundError, NotADirectoryError) as exc:
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
