"""The pieces every page is built from: inline data, inline assets, relative links, atomic write."""
from __future__ import annotations

import base64
import io
import json
import os
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np

# characters that could end the <script> element or start markup inside it, as JSON escapes
_SCRIPT_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026",
                   ord("\u2028"): "\\u2028", ord("\u2029"): "\\u2029"}


def json_script(data, element_id: str) -> str:
    """`data` as a JSON ``<script type="application/json">`` element that no string in it can end."""
    text = json.dumps(data, ensure_ascii=False, allow_nan=False, separators=(",", ":"), default=str)
    return f'<script type="application/json" id="{element_id}">{text.translate(_SCRIPT_ESCAPES)}</script>'


def asset(name: str) -> str:
    """The text of a file of src/pages/assets (scripts and styles inlined into the pages)."""
    return resources.files("src.pages").joinpath("assets", name).read_text(encoding="utf-8")


def page(title: str, style: str, body: str, data: dict, script: str) -> str:
    """A whole page: its style, a static body, its data element and its script, all inline.

    `title` is escaped; `style`, `body` and `script` are ours (never built from data)."""
    from html import escape

    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            # no request may leave the page: everything it shows is inline or a file beside it
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: 'self' file:; "
            "media-src 'self' file:\">"
            "<link rel=\"icon\" href=\"data:,\">"  # else the browser asks the folder for favicon.ico
            f"<title>{escape(title)}</title><style>{style}</style></head>\n<body>{body}\n"
            f"{json_script(data, 'page-data')}\n<script>{script}</script></body></html>\n")


def packed(values, dtype: str) -> dict:
    """A numeric column as little-endian bytes in base64 (JSON numbers would be ~3x larger)."""
    array = np.ascontiguousarray(np.asarray(values), dtype=np.dtype(dtype).newbyteorder("<"))
    return {"dtype": np.dtype(dtype).str.lstrip("<|"), "b64": base64.b64encode(array.tobytes()).decode("ascii")}


def jpeg_data_uri(frame: np.ndarray, max_size: tuple[int, int] = (128, 96), quality: int = 75) -> str:
    """An RGB uint8 frame shrunk (aspect kept) into `max_size`, as a ``data:image/jpeg`` URI."""
    from PIL import Image

    image = Image.fromarray(np.asarray(frame, np.uint8)).convert("RGB")
    image.thumbnail(max_size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def relative_href(target: str | os.PathLike, page_dir: str | os.PathLike) -> str:
    """A link from a page in `page_dir` to `target`: relative and percent-encoded (so no name can
    turn into a scheme such as ``javascript:``), or a ``file://`` URI across drives."""
    target = Path(target).expanduser().absolute()
    try:
        rel = os.path.relpath(target, Path(page_dir).absolute())
    except ValueError:  # another drive (Windows)
        return target.as_uri()
    return "./" + quote(Path(rel).as_posix())


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `path` under a temporary name renamed into place: a reader sees the old page or the new."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
