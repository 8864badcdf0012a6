"""Device and dtype resolution, the one place that reads what this machine offers."""
from __future__ import annotations

import logging

import torch

from src.errors import ConfigError as UsageError

logger = logging.getLogger(__name__)


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


def has_native_bf16(device: torch.device) -> bool:
    """Whether `device` itself (not whichever GPU is current) runs bf16 natively: Ampere (8.0) or newer."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto = bf16 on a CUDA GPU that runs it natively (Ampere or newer; the model's training
    precision), fp16 on older GPUs (bf16 is emulated or missing there), fp32 on CPU (bf16 is
    slower there). The capability is read from `device`, so a process told to use cuda:1 is not
    answered for cuda:0."""
    if dtype == "auto":
        if device.type != "cuda":
            return torch.float32
        if has_native_bf16(device):
            return torch.bfloat16
        logger.warning("%s has no native bf16: using fp16 (--dtype fp32 if features come out inf/NaN)",
                       torch.cuda.get_device_name(device))
        return torch.float16
    if dtype == "bf16" and device.type == "cuda" and not has_native_bf16(device):
        logger.warning("%s has no native bf16: --dtype bf16 is emulated there and slow (fp16 is native)",
                       torch.cuda.get_device_name(device))
    return _DTYPES[dtype]


def set_tf32(enabled: bool, device: torch.device) -> None:
    """fp32 matmuls and convolutions on TF32 tensor cores (CUDA, Ampere or newer): ~8x the fp32
    rate at a 10-bit mantissa in the products. Opt-in, since it changes fp32 results (~1e-3)."""
    if device.type != "cuda":
        if enabled:
            logger.warning("--tf32 applies to CUDA devices only: ignored on %s", device)
        return
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    if enabled:
        logger.info("TF32 on for fp32 matmuls on %s", device)
