"""Reading file bytes on executors, and paths inside SEMSPARK_HOME.

Spark lists files (any Hadoop filesystem); executors read each file's bytes themselves, locally
for ``file:`` URIs and through fsspec for the others (``hdfs://`` needs libhdfs, ``s3a://`` needs
s3fs on the executors), so that a nightly run reads only the files it has not seen before.
"""
from __future__ import annotations

import logging
from pathlib import Path
import re
import threading
from urllib.parse import unquote, urlparse

from semspark.config import semspark_home


def local_path(path: str) -> str | None:
    """The local filesystem path of a ``file:`` path as Spark lists it, or of a plain path; else None.

    Spark gives Hadoop path strings, not URIs: ``file:/data/a b#1.tif`` is a file named ``a b#1.tif``,
    so nothing here is percent-decoded or split at ``#``.
    """
    if path.startswith("file:"):
        rest = path[len("file:"):]
        return "/" + rest.lstrip("/") if rest.startswith("//") else rest
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", path):
        return None
    return path


def from_index_uri(uri: str) -> str:
    """A percent-encoded URI from Spark's file index (``inputFiles``) as the scan names the file."""
    plain = unquote(uri)
    return "file:/" + plain[len("file:///"):] if plain.startswith("file:///") else plain


def hadoop_filesystem(spark, path: str):
    """(Hadoop FileSystem, Hadoop Path) of a Hadoop path string, through Spark's JVM: the same calls
    for a local warehouse (``file:``, checksum files kept in step) as for HDFS, S3 or viewfs."""
    context = spark.sparkContext
    hadoop_path = context._jvm.org.apache.hadoop.fs.Path(path)
    return hadoop_path.getFileSystem(context._jsc.hadoopConfiguration()), hadoop_path


def hidden_from_spark(name: str) -> bool:
    """Names Spark's file index leaves out of a listing (files and folders alike): ``_`` and ``.``
    prefixes (a ``_`` name holding ``=`` is a partition and stays) and ``._COPYING_`` files half
    copied by Hadoop. Every walk of semspark's uses the same rule, so that a file is listed the same
    way whichever lists it."""
    exclude = (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")
    return exclude and not name.startswith(("_common_metadata", "_metadata"))


class UnlistableFolder(OSError):
    """A folder under a walked root could not be listed: the walk cannot be complete."""

    def __init__(self, relative: str, cause: OSError):
        super().__init__(f"{relative or '.'}: {cause}")
        self.relative, self.cause = relative, cause


def spark_data_files(directory: str) -> list[tuple[str, object]]:
    """The data files Spark reads under local folder ``directory``: ``walk_visible``'s files that
    still exist, without Parquet's summary files (``_metadata``, ``_common_metadata``), as
    (path relative to ``directory``, os.stat_result)."""
    return [(name, status) for name, status in walk_visible(directory)
            if status is not None and not name.rpartition("/")[2].startswith("_")]


def walk_visible(directory: str):
    """Every file under local folder ``directory`` that Spark's file index would list
    (``hidden_from_spark``), as (path relative to ``directory``, os.stat_result), folder by folder in
    name order, a folder's files before its subfolders. Symbolic links are followed (as Hadoop's
    local file system follows them); a link to nothing, or a file gone while walking, comes with
    stat None; a link to a folder that holds it (which would make the walk endless) is not followed.
    A folder that cannot be listed raises UnlistableFolder."""
    import logging
    import os

    top = os.stat(directory)
    pending = [("", frozenset({(top.st_dev, top.st_ino)}))]   # (folder, the folders it lies in)
    while pending:
        relative, above = pending.pop()
        try:
            entries = sorted(os.scandir(os.path.join(directory, relative) if relative else directory),
                             key=lambda entry: entry.name)
        except OSError as exc:
            raise UnlistableFolder(relative, exc) from exc
        subfolders = []
        for entry in entries:
            if hidden_from_spark(entry.name):
                continue
            name = f"{relative}/{entry.name}" if relative else entry.name
            try:
                if entry.is_dir():
                    folder = entry.stat()
                    key = (folder.st_dev, folder.st_ino)
                    if key in above:
                        logging.getLogger(__name__).warning(
                            "%s/%s links to a folder that holds it: not followed", directory, name)
                    else:
                        subfolders.append((name, above | {key}))
                    continue
                status = entry.stat()
            except FileNotFoundError:   # a link to nothing (or a file gone while walking)
                status = None
            yield name, status
        pending += reversed(subfolders)


def read_bytes(uri: str) -> bytes:
    path = local_path(uri)
    if path is not None:
        with open(path, "rb") as fh:
            return fh.read()
    import fsspec

    scheme = urlparse(uri).scheme
    if scheme == "s3a":  # Hadoop's name for S3; fsspec's is s3
        uri = "s3" + uri[3:]
    with fsspec.open(uri, "rb") as fh:
        return fh.read()


def read_bytes_retrying(uri: str, attempts: int = 3, pause_s: float = 0.2) -> bytes:
    """``read_bytes``, tried again after a short pause (doubling) when the read fails: a network
    file system's hiccup or a file being replaced passes; what still fails is raised."""
    import time

    for attempt in range(attempts):
        try:
            return read_bytes(uri)
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(pause_s * 2 ** attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def decode_text(data: bytes) -> str:
    """Sidecar text in whatever encoding the instrument wrote it.

    A byte-order mark names UTF-8 or UTF-16 (Hitachi TM writes UTF-16 LE with one); UTF-16 without
    one shows as every other byte NUL in ASCII text; else UTF-8, or Latin-1 as older JEOL and Hitachi
    software write (µ is 0xB5 there).
    """
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8"), (b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if data.startswith(bom):
            return data[len(bom):].decode(codec, errors="replace")
    head = data[:400]
    if len(head) >= 4 and head.count(0) >= len(head) // 3:
        odd_zeros = head[1::2].count(0)
        return data.decode("utf-16-le" if odd_zeros >= head[0::2].count(0) else "utf-16-be", errors="replace")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def home_path(relative: str) -> Path:
    """A path inside SEMSPARK_HOME; refuses anything that would leave it."""
    home = semspark_home()
    path = (home / relative).resolve()
    if home != path and home not in path.parents:
        raise ValueError(f"{relative!r} leaves SEMSPARK_HOME ({home})")
    return path


def read_staged_table(folder: Path, columns: list[str], where=None):
    """``columns`` of a Parquet folder a run staged under SEMSPARK_HOME (local whatever the
    warehouse), as a pyarrow Table read in the driver (rows matching ``where``, a pyarrow dataset
    expression): a night's few rows, where a Spark job would cost more than the data. Spark's
    _SUCCESS and .crc files are skipped by name; INT96 times (Spark's) come in microseconds, as
    catalog.local_columns reads the tables, so keys compare exactly. None when nothing was staged
    (Spark writes a file with the schema even for no rows: a folder without one had no writer)."""
    import pyarrow.dataset as ds

    staged = ds.dataset(str(folder), format=ds.ParquetFileFormat(
        read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us")))
    if not staged.files:
        return None
    return staged.to_table(columns=columns, filter=where)


def staged_batches(folder: Path, columns: dict, where=None, batch_rows: int = 64):
    """``read_staged_table`` a few rows at a time: record batches of ``columns`` (output name ->
    staged column) of the rows matching ``where``, for what is too big to hold at once (a bulk's
    pixels). Nothing when nothing was staged."""
    import pyarrow.dataset as ds

    staged = ds.dataset(str(folder), format=ds.ParquetFileFormat(
        read_options=ds.ParquetReadOptions(coerce_int96_timestamp_unit="us")))
    if not staged.files:
        return iter(())
    scanner = staged.scanner(columns={name: ds.field(column) for name, column in columns.items()},
                             filter=where, batch_size=batch_rows, batch_readahead=4,
                             fragment_readahead=2)   # a few batches ahead, not the default's hundreds
    return scanner.to_batches()


def read_staged_rows(folder: Path, columns: list[str]) -> list[dict]:
    """``read_staged_table`` as rows of plain Python values (None, int, datetime)."""
    table = read_staged_table(folder, columns)
    return [] if table is None else table.to_pylist()


class LockTimeout(TimeoutError):
    """The writer lock stayed held longer than the writer would wait; ``holder`` says by whom
    ("pid N purpose" of another process, or the purpose of another thread of this one)."""

    def __init__(self, message: str, holder: str):
        super().__init__(message)
        self.holder = holder


_held_locks: dict[str, tuple[object, int, str]] = {}   # name -> (the flock's file, depth, purpose): the holder's
_thread_locks: dict[str, object] = {}              # name -> threading.RLock: one thread of the process at a time
_thread_locks_guard = threading.Lock()


class writer_lock:
    """The catalog's writer lock: one writer at a time rewrites or appends to semspark's tables and
    dataset (``$SEMSPARK_HOME/locks/NAME.lock``, an flock, released by the kernel when the process
    dies, so a killed job never leaves it held). One thread of a process at a time too (the web
    app's request threads): re-entrant within a thread, not across threads, or two people's
    corrections could read and append at once. Readers never take it. A writer that finds it
    held waits, saying for whom, up to ``wait_s`` seconds."""

    def __init__(self, name: str = "catalog", purpose: str = "", wait_s: float = 6 * 3600):
        self.name, self.purpose, self.wait_s = name, purpose, wait_s

    def __enter__(self):
        import time

        with _thread_locks_guard:
            in_process = _thread_locks.setdefault(self.name, threading.RLock())
        deadline = time.monotonic() + self.wait_s
        if not in_process.acquire(blocking=False):
            held = _held_locks.get(self.name)
            holder = held[2] if held else "?"
            logging.getLogger(__name__).warning("waiting for the %s lock, held by another thread of this process (%s)",
                                                self.name, holder)
            if not in_process.acquire(timeout=max(self.wait_s, 0)):
                raise LockTimeout(f"the {self.name} lock was held for over {self.wait_s:g} s by another thread "
                                  f"of this process ({holder}); rerun when it is done", holder)
        held = _held_locks.get(self.name)
        if held is not None:   # this thread holds it already
            _held_locks[self.name] = (held[0], held[1] + 1, held[2])
            return self
        try:
            handle = self._lock_file(deadline)
        except BaseException:
            in_process.release()
            raise
        _held_locks[self.name] = (handle, 1, self.purpose)
        return self

    def _lock_file(self, deadline: float):
        """The flock, waited for while another process holds it; returns its open file."""
        import fcntl
        import os
        import time

        path = home_path(f"locks/{self.name}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+")
        holder = None
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if holder is None:
                    handle.seek(0)
                    holder = handle.read().strip() or "?"
                    logging.getLogger(__name__).warning("waiting for the %s lock (%s), held by %s", self.name, path,
                                                        holder)
                if time.monotonic() > deadline:
                    handle.close()
                    raise LockTimeout(f"the {self.name} lock ({path}) was held for over {self.wait_s:g} s by "
                                      f"another semspark process ({holder}); rerun when it is done", holder)
                time.sleep(0.5)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} {self.purpose}\n")
        handle.flush()
        return handle

    def __exit__(self, *exc):
        import fcntl

        handle, depth, purpose = _held_locks[self.name]
        if depth > 1:
            _held_locks[self.name] = (handle, depth - 1, purpose)
        else:
            del _held_locks[self.name]
            fcntl.flock(handle, fcntl.LOCK_UN)
            handle.close()
        _thread_locks[self.name].release()
        return False


def pause_point(name: str) -> None:
    """A named point where a test stops the process to kill it there: with SEMSPARK_PAUSE_AT=NAME,
    the process writes ``$SEMSPARK_HOME/paused-NAME`` and waits to be killed. Does nothing otherwise."""
    import os
    import time

    if os.environ.get("SEMSPARK_PAUSE_AT") != name:
        return
    home_path(f"paused-{name}").write_text(str(os.getpid()))
    while True:
        time.sleep(1)
