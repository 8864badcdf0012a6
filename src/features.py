"""Feature files (window records and image chunks), temp-file hygiene and the manifest.

A window feature file holds ``{"features": Tensor[N, D] float16, "shape": [N, D],
"dtype": "float16", "model_info": {...}, "metadata": {...}}`` as ``.pt`` or
``.safetensors``. Every write goes to a hidden temporary file that is renamed onto
the final name only once complete, so a file under the final name is never partial.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import time
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

import torch

from src.errors import OutputWriteError

logger = logging.getLogger(__name__)

FEATURE_FORMATS = ("pt", "safetensors")
SAFETENSORS_FORMAT = "vjepa2-features"
MANIFEST_STATUSES = ("ok", "skipped", "failed")

_SUFFIX_FORMATS = {".pt": "pt", ".pth": "pt", ".safetensors": "safetensors"}
_MANIFEST_KEYS = ("input", "output", "status", "error", "time")


# --------------------------------------------------------------------------- helpers


def _format_for(path: Path, fmt: str | None) -> str:
    if fmt is not None:
        if fmt not in FEATURE_FORMATS:
            raise ValueError(f"{path}: unknown feature format {fmt!r} (use {FEATURE_FORMATS})")
        return fmt
    try:
        return _SUFFIX_FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(
            f"{path}: unknown feature file suffix {path.suffix!r} (use .pt or .safetensors)"
        ) from None


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _prepare_tensor(tensor: torch.Tensor, shared: frozenset = frozenset()) -> torch.Tensor:
    """CPU, contiguous, and not a view into a larger storage (unless its storage is in `shared`:
    wholly held by the tensors saved with it, so written once, as it is)."""
    tensor = tensor.detach().cpu().contiguous()
    # torch.save writes a view's whole storage; clone so a slice of a big batch
    # does not drag the batch into every file.
    if (tensor.untyped_storage().nbytes() > tensor.numel() * tensor.element_size()
            and tensor.untyped_storage().data_ptr() not in shared):
        tensor = tensor.clone()
    return tensor


def _covered_storages(tensors: list[torch.Tensor]) -> frozenset:
    """Storages (by address) of CPU tensors that those tensors cover entirely between them, e.g. the
    rows of an encoded batch that all go into one chunk: saved as they are, with no second copy of
    the chunk in memory."""
    held: dict[int, tuple[int, set]] = {}
    for t in tensors:
        if t.device.type == "cpu" and t.is_contiguous():
            storage = t.untyped_storage()
            start = t.storage_offset() * t.element_size()
            held.setdefault(storage.data_ptr(), (storage.nbytes(), set()))[1].add(
                (start, start + t.numel() * t.element_size()))
    covered = set()
    for ptr, (nbytes, spans) in held.items():
        end = 0
        for start, stop in sorted(spans):  # the spans tile the storage: no gap, no overlap
            if start != end:
                break
            end = stop
        else:
            if end == nbytes:
                covered.add(ptr)
    return frozenset(covered)


def _json_part(path: Path, what: str, value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {what} is not JSON-serialisable ({exc})") from None


def _temp_path(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)




@contextlib.contextmanager
def outputs_written(out: str | os.PathLike) -> Iterator[None]:
    """Turn an OSError while writing pictures, videos or a package under `out` into an
    OutputWriteError (exit 4, the OS's reason, the file named when the error names it), as a
    failed feature write is; files already renamed into place stay."""
    try:
        yield
    except OutputWriteError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise OutputWriteError(reason if exc.filename and reason.startswith(str(exc.filename))
                               else f"{exc.filename or out}: cannot write output ({reason})") from exc


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an advisory `flock` on `lock_file` (created if missing) for the block, waiting while
    another process holds it (`on_wait` is called once if it has to). Released when the block ends
    or the process dies, kill -9 included."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def claim_output(path: str | os.PathLike) -> Iterator[bool]:
    """Exclusive claim on producing `path` across processes: yields True if this process holds it.

    An advisory `flock` on `<dir>/.locks/<name>.lock`, released when the block ends or the process
    dies (kill -9 included), so two runs over one output tree never compute or record the same
    output twice, and a crashed run never leaves a claim behind.
    """
    path = Path(path)
    lock_dir = path.parent / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_dir / f"{path.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer killed mid-save
            try:
                stale.unlink()
                logger.info("removed %s, left by an interrupted write", stale.name)
            except FileNotFoundError:
                pass
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class _ErrorRecordingWriter:
    """A binary file wrapper that remembers the first OSError of a write (see `atomic_write`)."""

    def __init__(self, handle: BinaryIO):
        self._handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self._handle.write(data)
        except OSError as exc:
            self.error = self.error or exc
            raise

    def __getattr__(self, name):  # flush, tell, seek, fileno, … of the real file
        return getattr(self._handle, name)


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None], what: str = "feature file") -> Path:
    """Every writer's one way to write a file: run ``write`` on a hidden temp file next to ``path``,
    fsync it, rename it onto ``path``, fsync the folder (so the rename itself survives a crash).
    A file under its final name is therefore always complete. A failed write removes the temp file
    and raises OutputWriteError naming ``path``, ``what`` it is and the OS's reason."""
    path = Path(path)
    tmp = _temp_path(path)
    recorder = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "xb") as handle:
            recorder = _ErrorRecordingWriter(handle)
            write(recorder)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except OSError:
            pass
        if isinstance(exc, Exception):
            # torch.save turns the OS error of a failed write into its own RuntimeError: report
            # the OS's reason ("No space left on device", "File too large") when there was one
            cause = recorder.error if recorder is not None and recorder.error is not None else exc
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else _reason(cause)
            raise OutputWriteError(f"{path}: cannot write {what} ({reason})") from exc
        raise  # KeyboardInterrupt and friends propagate unchanged
    _fsync_dir(path.parent)
    return path


def save_object(obj: Any, path: str | os.PathLike) -> Path:
    """Atomically `torch.save` any object of tensors and plain values (a probe, a training state)
    with the same temp file, fsync and rename as feature files: a file under its name is complete."""
    path = Path(path)
    return atomic_write(path, lambda handle: torch.save(obj, handle))


def _load_pickle_free(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature file does not exist")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path}: not a valid feature file (not a torch archive: truncated, corrupt or not "
                         "written by torch.save)")
    try:
        # mmap: checking a large chunk for completeness must not read all of it
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # pickle/zip/EOF/RuntimeError all mean a bad file
        raise ValueError(f"{path}: not a valid feature file ({_reason(exc)})") from exc


def _reason(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else type(exc).__name__)[:300]


# --------------------------------------------------------------------------- window records


def _check_record(record: dict, path: Path) -> tuple[dict, dict]:
    """Split a record into (tensors, JSON-able rest) after checking it."""
    if not isinstance(record, dict):
        raise ValueError(f"{path}: feature record must be a dict, got {type(record).__name__}")
    features = record.get("features")
    if not isinstance(features, torch.Tensor):
        raise ValueError(f"{path}: feature record has no 'features' tensor")
    if "shape" in record and list(record["shape"]) != list(features.shape):
        raise ValueError(
            f"{path}: record shape {list(record['shape'])} != features shape {list(features.shape)}"
        )
    if "dtype" in record and record["dtype"] != _dtype_name(features):
        raise ValueError(
            f"{path}: record dtype {record['dtype']!r} != features dtype {_dtype_name(features)!r}"
        )
    tensors = {k: v for k, v in record.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in record.items() if not isinstance(v, torch.Tensor)}
    for key in tensors:
        if not isinstance(key, str):
            raise ValueError(f"{path}: tensor key {key!r} is not a string")
    return tensors, rest


def save_features(record: dict, path: str | os.PathLike, fmt: str | None = None) -> Path:
    """Atomically write a window feature record as ``.pt`` or ``.safetensors``.

    ``fmt`` defaults to the suffix. Non-tensor values must be JSON-serialisable
    (both formats, so a file written as .pt could equally be .safetensors).
    """
    path = Path(path)
    fmt = _format_for(path, fmt)
    tensors, rest = _check_record(record, path)
    rest_json = _json_part(path, "record", rest)
    tensors = {k: _prepare_tensor(v) for k, v in tensors.items()}

    if fmt == "pt":
        payload = {k: tensors.get(k, v) for k, v in record.items()}

        def write(handle: BinaryIO) -> None:
            torch.save(payload, handle)

    else:
        from safetensors.torch import save as safetensors_save

        metadata = {
            "format": SAFETENSORS_FORMAT,
            "record": rest_json,
            "keys": json.dumps(list(record)),  # restores the original key order
        }

        def write(handle: BinaryIO) -> None:
            handle.write(safetensors_save(tensors, metadata=metadata))

    atomic_write(path, write)
    logger.debug("wrote %s", path)
    return path


def _load_safetensors(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: feature file does not exist")
    from safetensors import safe_open
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path), device="cpu")
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
    except Exception as exc:  # SafetensorError, OSError on short reads
        raise ValueError(f"{path}: not a valid feature file ({_reason(exc)})") from exc
    if metadata.get("format") != SAFETENSORS_FORMAT:
        return dict(tensors)  # a plain safetensors file: tensors only
    try:
        rest = json.loads(metadata["record"])
        keys = json.loads(metadata.get("keys", "null")) or [*tensors, *rest]
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid feature file (bad record metadata: {exc})") from exc
    record = {k: tensors[k] if k in tensors else rest[k] for k in keys if k in tensors or k in rest}
    for source in (tensors, rest):
        for key, value in source.items():
            record.setdefault(key, value)
    return record


def load_features(path: str | os.PathLike) -> dict:
    """Read a window feature record written by :func:`save_features`."""
    path = Path(path)
    fmt = _format_for(path, None)
    record = _load_pickle_free(path) if fmt == "pt" else _load_safetensors(path)
    if not isinstance(record, dict) or not isinstance(record.get("features"), torch.Tensor):
        raise ValueError(f"{path}: not a valid feature file (no 'features' tensor)")
    return record


# --------------------------------------------------------------------------- image chunks


def _check_chunk(chunk: Any, path: Path, what: str) -> None:
    if not isinstance(chunk, dict):
        raise ValueError(f"{path}: {what} (chunk must be a dict, got {type(chunk).__name__})")
    for key, entry in chunk.items():
        if not isinstance(key, str):
            raise ValueError(f"{path}: {what} (chunk key {key!r} is not a string)")
        if not isinstance(entry, dict) or not isinstance(entry.get("features"), torch.Tensor):
            raise ValueError(f"{path}: {what} (entry {key!r} has no 'features' tensor)")


def save_chunk(chunk: dict, path: str | os.PathLike) -> Path:
    """Atomically write ``{relative_path: {"features": Tensor, "metadata": {...}}}`` (pt)."""
    path = Path(path)
    _check_chunk(chunk, path, "cannot save chunk")
    payload = {}
    shared = _covered_storages([v for entry in chunk.values() for v in entry.values() if isinstance(v, torch.Tensor)])
    for key, entry in chunk.items():
        rest = {k: v for k, v in entry.items() if not isinstance(v, torch.Tensor)}
        _json_part(path, f"chunk entry {key!r}", rest)
        payload[key] = {
            k: _prepare_tensor(v, shared) if isinstance(v, torch.Tensor) else v for k, v in entry.items()
        }
    atomic_write(path, lambda handle: torch.save(payload, handle))
    logger.debug("wrote chunk %s (%d entries)", path, len(payload))
    return path


def load_chunk(path: str | os.PathLike) -> dict:
    """Read a chunk file written by :func:`save_chunk`."""
    path = Path(path)
    chunk = _load_pickle_free(path)
    _check_chunk(chunk, path, "not a valid feature file")
    return chunk


def load_any(path: str | os.PathLike) -> dict:
    """A window record, or else an image chunk (both load memory-mapped, so trying is cheap)."""
    path = Path(path)
    try:
        return load_features(path)
    except ValueError:
        if path.suffix == ".safetensors":
            raise
        return load_chunk(path)


# --------------------------------------------------------------------------- completeness


def _record_complete(record: dict) -> bool:
    features = record.get("features")
    return (
        isinstance(features, torch.Tensor)
        and "shape" in record
        and list(features.shape) == list(record["shape"])
    )


def load_complete(path: str | os.PathLike) -> dict | None:
    """The window record at ``path`` if it is complete (see :func:`is_complete`), else None.

    For resuming: one read both decides "done" and gives the metadata to check it against.
    """
    try:
        record = load_features(path)
    except Exception as exc:
        logger.debug("%s: not complete (%s)", path, exc)
        return None
    return record if _record_complete(record) else None


def is_complete(path: str | os.PathLike) -> bool:
    """True if ``path`` is a loadable window record (shape matches) or chunk file.

    Never raises: any problem reads as "not complete".
    """
    try:
        path = Path(path)
        if not path.is_file():
            return False
        fmt = _format_for(path, None)
        if fmt == "safetensors":
            return _record_complete(_load_safetensors(path))
        obj = _load_pickle_free(path)
        if not isinstance(obj, dict):
            return False
        if isinstance(obj.get("features"), torch.Tensor):
            return _record_complete(obj)
        # A chunk file: every entry carries its own features tensor.
        return all(
            isinstance(entry, dict) and isinstance(entry.get("features"), torch.Tensor)
            for entry in obj.values()
        )
    except Exception as exc:
        logger.debug("%s: not complete (%s)", path, exc)
        return False


# --------------------------------------------------------------------------- temp files


def temp_files(directory: str | os.PathLike) -> list[Path]:
    """Leftover temporary files (``.*.tmp``) anywhere under ``directory``, sorted."""
    found = []
    for dirpath, _, filenames in os.walk(directory):
        found.extend(
            Path(dirpath) / name
            for name in filenames
            if name.startswith(".") and name.endswith(".tmp")
        )
    return sorted(found)


def remove_stale_temp_files(directory: str | os.PathLike, older_than_s: float = 0) -> list[Path]:
    """Delete temp files under ``directory`` last modified at least ``older_than_s`` ago.

    With the default 0 this also deletes files other live processes are still
    writing; call it before starting workers, or pass a safe age when sharing
    an output folder with running jobs.
    """
    now = time.time()
    removed = []
    for path in temp_files(directory):
        try:
            if now - path.stat().st_mtime >= older_than_s:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            continue  # another process finished or cleaned it meanwhile
    if removed:
        logger.info("removed %d stale temporary file(s) under %s", len(removed), directory)
    return removed


# --------------------------------------------------------------------------- manifest


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Manifest:
    """Append-only JSONL log of what happened to each input.

    Each line is written with one ``write`` on an ``O_APPEND`` descriptor and
    fsynced, so processes sharing the file interleave whole lines (on local
    filesystems; NFS does not guarantee atomic appends).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._fd: int | None = None
        self._pid: int | None = None

    def _descriptor(self) -> int:
        # Reopen after fork: a descriptor inherited from the parent is shared state.
        if self._fd is None or self._pid != os.getpid():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._fd, self._pid = fd, os.getpid()
            # Under the lock writers take: a record being appended by another process can show
            # its first page before its last (the size grows page by page), which would read as
            # a torn line and get a stray "\n" (an empty line) appended after it.
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                self._terminate_torn_line()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        return self._fd

    def _terminate_torn_line(self) -> None:
        # A crash mid-write leaves a line without "\n"; end it so our first
        # record is not glued onto it (read() then skips the torn line alone).
        try:
            with open(self.path, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                if handle.tell() == 0:
                    return
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    os.write(self._fd, b"\n")
        except OSError as exc:
            logger.debug("%s: could not check last line (%s)", self.path, exc)

    def record(
        self,
        input: str | os.PathLike,
        output: str | os.PathLike | None,
        status: str,
        error: str | None = None,
        extra: dict | None = None,
    ) -> dict:
        """Append one line and return the entry written."""
        if status not in MANIFEST_STATUSES:
            raise ValueError(f"{self.path}: manifest status {status!r} not in {MANIFEST_STATUSES}")
        entry = {
            "input": str(input),
            "output": None if output is None else str(output),
            "status": status,
            "error": None if error is None else str(error),
            "time": _utc_now(),
        }
        for key, value in (extra or {}).items():
            if key in _MANIFEST_KEYS:
                raise ValueError(f"{self.path}: extra key {key!r} clashes with a manifest field")
            entry[key] = value
        # default=str keeps the log going for Paths, numpy scalars and similar.
        data = (json.dumps(entry, ensure_ascii=False, default=str) + "\n").encode("utf-8")
        try:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)  # see _descriptor: whole lines, never a line check mid-write
            try:
                written = os.write(fd, data)
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(fd)
        except OSError as exc:
            raise OutputWriteError(f"{self.path}: cannot write to the manifest ({_reason(exc)})") from exc
        return entry

    def close(self) -> None:
        """Close the file descriptor (reopened on the next record)."""
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = self._pid = None

    def __enter__(self) -> "Manifest":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    @staticmethod
    def read(path: str | os.PathLike) -> list[dict]:
        """All records in file order; a torn or invalid line is skipped."""
        path = Path(path)
        if not path.is_file():
            return []
        lines = path.read_bytes().split(b"\n")
        records = []
        for number, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                entry = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                entry = None
            if not isinstance(entry, dict):
                if number == len(lines):
                    logger.debug("%s: skipping torn last line", path)
                else:
                    logger.warning("%s: line %d is not a JSON record; skipped", path, number)
                continue
            records.append(entry)
        return records

    @staticmethod
    def latest_status(path: str | os.PathLike) -> dict[str, dict]:
        """Last record per input."""
        return latest_status(path)


def latest_status(path: str | os.PathLike) -> dict[str, dict]:
    """``{input: last record for that input}`` from a manifest file."""
    latest: dict[str, dict] = {}
    for entry in Manifest.read(path):
        if "input" in entry:
            latest[str(entry["input"])] = entry
    return latest
