"""The embedded JVM's class archive: the classes a command loaded, kept so the next run maps them.

Java's application class-data sharing (AppCDS, JDK 13+: ``-XX:ArchiveClassesAtExit`` writes the
classes a JVM loaded into an archive when it exits; ``-XX:SharedArchiveFile`` maps them at start)
spares every later run the loading, parsing and verifying of the classes Spark, Hive's metastore
client and DataNucleus need: measured on 2 cores (bench/night_bench.py's repository), a night of 40
images starts its ingest 4.8-5.3 s after the Spark session is asked for instead of 7.8-8.8 s, and
the whole night takes 19.3 and 21.5 s instead of 23.0 and 24.9 s (medians, two runs).

One archive per command (what ``semspark sql`` loads is not what the nightly loads) and per JVM,
Spark jars and class path (an archive only fits the class path it was made with), kept in a folder
of the machine's (``spark.class_archive_dir``; by default ``$XDG_CACHE_HOME/semspark/jvm``), not of
a SEMSPARK_HOME: every catalog on the machine shares them. The first run of a command on a machine
makes its archive when its JVM exits (a few seconds, once); semspark waits for that JVM to finish
writing and only then moves the archive in under its final name, so a run killed while writing
leaves no archive anyone maps (a part-written one could crash the JVM that maps it). Runs that find
no archive make one each, under their own names; the last one moved in wins, each is whole.

JVM warnings go to standard error, never to standard output (an archive that no longer fits is said
there, and the run goes on without it): ``semspark sql --format json`` prints JSON only.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# The JVM's own warnings (an archive that does not fit among them) to standard error, not standard
# output. While writing an archive the JVM warns of every class it leaves out (signed jars, classes
# of Java 5 and older: 800 lines for the nightly), to no one's use: those are not shown.
JVM_LOG_OPTIONS = "-Xlog:disable -Xlog:all=warning:stderr"
JVM_LOG_OPTIONS_WRITING = "-Xlog:disable -Xlog:all=warning,cds*=off:stderr"
DUMP_WAIT_S = 300
STALE_PART_S = 3600   # a part-written archive this old has no JVM writing it any more
# An archive no run mapped for this long fits nothing in use any more (a reinstall's new jars, an
# older Java, a removed checkout's class path make new keys and leave the old archives behind,
# 130 to 180 MB each): removed. Each run that maps an archive marks it used (its modification time).
UNUSED_ARCHIVE_S = 14 * 86400


@dataclass(frozen=True)
class ArchivePlan:
    """What a session's JVM does with its class archive: map ``archive`` (``making`` is None) or
    write the classes it loads to ``making`` when it exits, to be moved to ``archive``."""
    archive: Path
    making: Path | None

    def java_options(self, given: str = "") -> str:
        """The driver's Java options with the archive's: the logging options first (so the
        operator's own -Xlog options, after them, still apply), the archive's last."""
        if self.making is None:
            return " ".join(filter(None, [JVM_LOG_OPTIONS, given.strip(), f"-XX:SharedArchiveFile={self.archive}"]))
        return " ".join(filter(None, [JVM_LOG_OPTIONS_WRITING, given.strip(), f"-XX:ArchiveClassesAtExit={self.making}"]))


def archive_dir(configured: str = "") -> Path:
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "semspark" / "jvm"


def _file_identity(path: Path) -> list:
    try:
        stat = path.stat()
    except OSError:
        return [str(path), None]
    return [str(path), stat.st_size, int(stat.st_mtime)]


def _java() -> Path | None:
    home = os.environ.get("JAVA_HOME")
    java = Path(home) / "bin" / "java" if home else (Path(shutil.which("java")) if shutil.which("java") else None)
    return java.resolve() if java is not None and java.exists() else None


def archive_key(command: str, settings: dict[str, str]) -> str:
    """What an archive must match to be mapped: the JVM (its launcher and libjvm), Spark's jars (their
    sizes and modification times), the extra class path, the conf folders spark-submit puts on the
    class path, the heap size (compressed pointers) and the -XX options; and the command."""
    import pyspark

    java = _java()
    libjvm = sorted(java.parent.parent.glob("lib/server/libjvm.so")) if java else []
    spark_home = Path(os.environ.get("SPARK_HOME") or Path(pyspark.__file__).parent)
    # the JVM checks each class-path jar's size and modification time against the archive: a
    # reinstall that rewrote the same jars (2026-12-03) left every run warning "the top archive
    # failed to load" and mapping nothing, under a key that never changed, so never remade
    jars = sorted(_file_identity(p) for p in (spark_home / "jars").glob("*.jar"))
    options = [o for o in settings.get("spark.driver.extraJavaOptions", "").split()
               if o.startswith("-XX:") and "Archive" not in o]
    identity = {"command": command, "java": _file_identity(java) if java else None,
                "libjvm": [_file_identity(p) for p in libjvm], "spark_home": str(spark_home), "jars": jars,
                "class_path": settings.get("spark.driver.extraClassPath", ""),
                "jars_conf": settings.get("spark.jars", ""), "memory": settings.get("spark.driver.memory", ""),
                "options": options, "env": {k: os.environ.get(k, "") for k in ("SPARK_CONF_DIR", "HADOOP_CONF_DIR",
                                                                                 "YARN_CONF_DIR", "SPARK_DIST_CLASSPATH")}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def plan(command: str, settings: dict[str, str], configured_dir: str = "") -> ArchivePlan | None:
    """The archive this session's JVM maps or makes; None when its folder cannot be written (the
    run goes on without one, said once in the log)."""
    try:
        folder = archive_dir(configured_dir)
    except RuntimeError as exc:   # no home folder to find a cache in (a service account without one)
        log.warning("no JVM class archive (%s); set spark.class_archive_dir", exc)
        return None
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in command) or "semspark"
    archive = folder / f"{safe}-{archive_key(command, settings)}.jsa"
    if archive.is_file() and archive.stat().st_size > 0:
        try:
            os.utime(archive)   # used now: not pruned while runs map it
        except OSError:   # a folder shared read-only: the archive is still mapped
            pass
        _remove_unused(folder)
        return ArchivePlan(archive, None)
    _remove_unused(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        log.warning("no JVM class archive (the folder %s cannot be written: %s); set spark.class_archive_dir", folder, exc)
        return None
    return ArchivePlan(archive, folder / f".{archive.stem}.{uuid.uuid4().hex}.part")


def _remove_unused(folder: Path) -> None:
    """What JVMs wrote when their Python process was killed before moving the archive in, and
    archives no run mapped for UNUSED_ARCHIVE_S. A JVM that maps one keeps its mapping when the
    file goes (Linux), and a later run of its kind makes it again."""
    now = time.time()
    try:
        for path in [*folder.glob(".*.part"), *folder.glob("*.jsa")]:
            unused = now - path.stat().st_mtime
            if unused > (STALE_PART_S if path.suffix == ".part" else UNUSED_ARCHIVE_S):
                path.unlink(missing_ok=True)
                if path.suffix == ".jsa":
                    log.info("removed the class archive %s, not used for %d days", path.name, unused // 86400)
    except OSError:   # a folder that cannot be read or written: plan() says so when it matters
        pass


def finish(plan_: ArchivePlan | None, gateway) -> None:
    """After the session stopped: when this run's JVM makes the archive, end that JVM (it writes the
    archive as it exits), wait for it, and move the archive in if the JVM ended well. A later
    session in this process starts a JVM of its own."""
    if plan_ is None or plan_.making is None or gateway is None or getattr(gateway, "proc", None) is None:
        return
    from pyspark import SparkContext

    process = gateway.proc
    log.info("writing the JVM's class archive for later runs (once per command and machine): %s", plan_.archive)
    started = time.monotonic()
    try:
        gateway.shutdown()
    except Exception:  # the JVM ends when its standard input closes, whatever the gateway says
        log.debug("gateway shutdown", exc_info=True)
    if process.stdin is not None:
        process.stdin.close()   # PythonGatewayServer exits on end of input
    try:
        status = process.wait(timeout=DUMP_WAIT_S)
    except Exception:
        log.warning("the JVM did not end within %d s; no class archive this time", DUMP_WAIT_S)
        status = None
    SparkContext._gateway = None
    SparkContext._jvm = None
    made = plan_.making
    if status == 0 and made.is_file() and made.stat().st_size > 0:
        os.replace(made, plan_.archive)
        log.info("class archive written in %.1f s (%d MB)", time.monotonic() - started,
                 plan_.archive.stat().st_size // 2**20)
    else:
        made.unlink(missing_ok=True)
        log.warning("the JVM ended with status %s without a whole class archive; the next run tries again", status)
