"""Video decoding per backend, first and last window, and the input pipeline per worker (bench/decode.py
has the measurement and its own command): `python bench/run.py --only decode`."""
from __future__ import annotations

from bench import decode as decode_bench
from bench.sections import Settings

OPT_IN = True  # writes minutes of 1080p video first: runs only when named with --only


def run(settings: Settings, results: dict) -> dict:
    return decode_bench.run(settings.quick)


def markdown(result: dict) -> list[str]:
    return ["", "## Video decoding: seconds per minute of video, first and last window, per backend", "",
            *decode_bench.markdown(result).splitlines()]
