"""HTML pages that open offline from a folder or a zip: the explorer of an embeddings table (one
self-contained file: a 2-D map of every row, thumbnails, search, nearest neighbours) and the
index.html of a package or a pictures folder (settings, videos, pictures side by side, every file).

Every page embeds its data as JSON in a ``<script type="application/json">`` element (``<``, ``>``
and ``&`` escaped) and builds its DOM from it with ``textContent``: file names, labels and metadata
are data, never markup. No page requests anything from a host.
"""
from src.pages.explorer import ExplorerSummary, write_explorer
from src.pages.index import write_index

__all__ = ["ExplorerSummary", "write_explorer", "write_index"]
