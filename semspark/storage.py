"""Reading file bytes on executors, and paths inside SEMSPARK_HOME.

Spark lists files (any Hadoop filesystem); executors read each file's bytes themselves, locally
for ``file:`` URIs and through fsspec for the others (``hdfs://`` needs libhdfs, ``s3a://`` needs
s3fs on the executors), so that a nightly run reads only the files it has not seen before.
"""
from __future__ import annotations

from pathlib import Path
import re
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
