"""The explorer page's drawing library, chosen by measurement in headless Chromium (bench/pages.py
has the measurement and its own command): `python bench/run.py --only pages`."""
from __future__ import annotations

from bench import pages as page_bench
from bench.sections import Settings

OPT_IN = True  # needs Chromium and minutes: runs only when named with --only


def run(settings: Settings, results: dict) -> dict:
    return page_bench.run(settings.quick)


def markdown(result: dict) -> list[str]:
    return ["", f"## Explorer page: file size, first paint and hover in Chromium {result.get('chromium')}", "",
            *page_bench.markdown(result).splitlines()]
