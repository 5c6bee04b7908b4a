"""The embedded JVM's class archive (semspark/class_archive.py), with real JVMs: the first run of a
command makes it when its JVM exits, the next run's JVM maps it (its own class-loading log says where
each class came from), standard output stays the command's own, and an archive that does not fit
costs nothing but the time."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from semspark.class_archive import archive_key
from semspark.config import ConfigError, SparkConfig

VENV_BIN = Path(sys.executable).parent
QUERY = "SELECT 6 * 7 AS answer"


def sql(env, config: Path) -> subprocess.CompletedProcess:
    result = subprocess.run([str(VENV_BIN / "semspark"), "--config", str(config), "sql", QUERY, "--format", "json"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture()
def command_env(tmp_path):
    env = dict(os.environ, SEMSPARK_HOME=str(tmp_path / "home"), SEMSPARK_MASTER="local[1]",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("SEMSPARK_CONF", None)
    return env


def write_config(path: Path, archives: Path, java_options: str = "") -> Path:
    added = f'  driver_java_options: "{java_options}"\n' if java_options else ""
    path.write_text(f"spark:\n  class_archive_dir: {archives}\n{added}")
    return path


@pytest.mark.spark
def test_the_first_run_makes_the_archive_and_the_next_run_maps_it(tmp_path, command_env):
    archives = tmp_path / "jvm"
    first = sql(command_env, write_config(tmp_path / "first.yaml", archives))
    # standard output is the command's: one JSON row, none of the JVM's words about classes
    assert [json.loads(line) for line in first.stdout.splitlines()] == [{"answer": 42}]
    made = list(archives.glob("*.jsa"))
    assert len(made) == 1 and made[0].name.startswith("semspark-sql-"), list(archives.iterdir())
    assert made[0].stat().st_size > 20 * 2**20          # Spark's and Hive's classes: over 100 MB here
    assert not list(archives.glob(".*.part"))            # moved in whole, nothing half-written left
    assert "class archive written" in first.stderr

    # The second JVM logs where each class came from: an option of the user's own, added to
    # semspark's (an -X option: the archive's key counts the -XX ones)
    load_log = tmp_path / "class-load.log"
    second = sql(command_env, write_config(tmp_path / "second.yaml", archives, f"-Xlog:class+load=info:file={load_log}"))
    assert [json.loads(line) for line in second.stdout.splitlines()] == [{"answer": 42}]
    assert "class archive written" not in second.stderr
    lines = load_log.read_text().splitlines()
    from_archive = [line for line in lines if "shared objects file (top)" in line]
    # Spark's own classes come from the archive this command's first run made
    assert any("org.apache.spark.sql.SparkSession " in line for line in from_archive), len(from_archive)
    assert len(from_archive) > 5000, len(from_archive)
    assert list(archives.glob("*.jsa")) == made          # mapped, not made again

    # an archive that does not fit (what a broken disk might leave: no header) costs only the time
    made[0].chmod(0o644)
    made[0].write_bytes(bytes(4096))
    again = sql(command_env, tmp_path / "first.yaml")
    assert [json.loads(line) for line in again.stdout.splitlines()] == [{"answer": 42}]


def test_the_key_follows_what_an_archive_must_match():
    settings = {"spark.driver.extraJavaOptions": "-Dderby.system.home=/a -XX:TieredStopAtLevel=1",
                "spark.driver.memory": "4g"}
    key = archive_key("semspark-nightly", settings)
    assert archive_key("semspark-nightly", {**settings, "spark.driver.extraJavaOptions":
                                            "-Dderby.system.home=/b -XX:TieredStopAtLevel=1"}) == key
    assert archive_key("semspark-sql", settings) != key
    assert archive_key("semspark-nightly", {**settings, "spark.driver.memory": "40g"}) != key   # no compressed oops
    assert archive_key("semspark-nightly", {**settings, "spark.driver.extraClassPath": "/usr/share/java/x.jar"}) != key
    assert archive_key("semspark-nightly", {**settings, "spark.driver.extraJavaOptions": "-XX:+UseParallelGC"}) != key
    with pytest.raises(ConfigError, match="class_archive"):
        SparkConfig(class_archive="on")


def test_the_key_follows_sparks_jars_rewritten_in_place(tmp_path, monkeypatch):
    """The JVM refuses an archive when a class-path jar's modification time differs from the one it
    recorded, even with the same name and size (seen after a reinstall rewrote Spark's jars: every
    run warned and mapped nothing, and the unchanged key never let a new archive be made)."""
    jars = tmp_path / "spark" / "jars"
    jars.mkdir(parents=True)
    jar = jars / "spark-core_2.12-3.5.9.jar"
    jar.write_bytes(b"PK" + bytes(100))
    monkeypatch.setenv("SPARK_HOME", str(tmp_path / "spark"))
    settings = {"spark.driver.memory": "4g"}
    key = archive_key("semspark-nightly", settings)
    assert archive_key("semspark-nightly", settings) == key
    os.utime(jar, (jar.stat().st_atime, jar.stat().st_mtime - 3600))   # the same bytes, rewritten earlier
    assert archive_key("semspark-nightly", settings) != key


def test_part_written_archives_of_killed_runs_are_removed_after_an_hour(tmp_path):
    """A JVM whose Python process was killed writes its archive to a part file nobody moves in:
    the next run removes those over an hour old, never a younger one (a JVM may be writing it)."""
    import time

    from semspark.class_archive import plan

    tmp_path.joinpath("jvm").mkdir()
    old, young = tmp_path / "jvm" / ".semspark-sql-x.a.part", tmp_path / "jvm" / ".semspark-sql-x.b.part"
    for part in (old, young):
        part.write_bytes(b"\0" * 16)
    two_hours_ago = time.time() - 7200
    os.utime(old, (two_hours_ago, two_hours_ago))
    made = plan("semspark-sql", {"spark.driver.memory": "4g"}, str(tmp_path / "jvm"))
    assert made is not None and made.making is not None and made.making.parent == tmp_path / "jvm"
    assert not old.exists() and young.exists()
    assert "-XX:ArchiveClassesAtExit=" in made.java_options("-Dx=1") and "-Dx=1" in made.java_options("-Dx=1")


def test_archives_no_run_mapped_for_two_weeks_are_removed(tmp_path):
    """Archives under keys nothing uses any more (new jars, another Java) are removed once no run
    mapped them for 14 days; an archive a run maps is marked used and kept."""
    import time

    from semspark.class_archive import archive_key, plan

    folder = tmp_path / "jvm"
    folder.mkdir()
    settings = {"spark.driver.memory": "4g"}
    in_use = folder / f"semspark-sql-{archive_key('semspark-sql', settings)}.jsa"
    superseded, recent = folder / "semspark-sql-0123456789abcdef.jsa", folder / "semspark-nightly-0123456789abcdef.jsa"
    for archive in (in_use, superseded, recent):
        archive.write_bytes(b"\0" * 16)
    three_weeks_ago, ten_days_ago = time.time() - 21 * 86400, time.time() - 10 * 86400
    for archive in (in_use, superseded):
        os.utime(archive, (three_weeks_ago, three_weeks_ago))
    os.utime(recent, (ten_days_ago, ten_days_ago))
    mapped = plan("semspark-sql", settings, str(folder))
    assert mapped is not None and mapped.making is None and mapped.archive == in_use
    assert not superseded.exists() and recent.exists() and in_use.exists()
    assert time.time() - in_use.stat().st_mtime < 60   # marked used by the run that maps it
