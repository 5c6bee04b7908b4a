"""A catalog for teams: a real PostgreSQL server (Debian's package, started by deploy/metastore.sh on
a free loopback port) holds the Hive metastore. An embedded Derby catalog is moved to it with one
command, and then the SQL server answers beeline while a nightly run writes: two processes on one
catalog at once, which embedded Derby refuses. Expected counts come from the raw files (hashlib)."""
from __future__ import annotations

import hashlib
import re
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from semspark.synth.generate import generate

from .conftest import PROJECT_ROOT, free_port, start_sql_server, stop_process_group

VENV_BIN = Path(sys.executable).parent
IMAGE_SUFFIXES = (".tif", ".png", ".jpg")


def distinct_images(*folders) -> int:
    return len({hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in Path(folder).rglob("*")
                if p.suffix in IMAGE_SUFFIXES})


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server of its own: a folder the server's system user can enter, a free port."""
    folder = Path(tempfile.mkdtemp(prefix="semspark-metastore-"))
    folder.chmod(0o755)
    port = free_port()
    env = dict(os.environ, METASTORE_DIR=str(folder / "pg"), METASTORE_PORT=str(port), SEMSPARK_HOME=str(folder),
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("SEMSPARK_METASTORE_PASSWORD", None)
    script = str(PROJECT_ROOT / "deploy" / "metastore.sh")
    started = subprocess.run(["bash", script, "start"], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stderr[-3000:]
    try:
        conf = subprocess.run(["bash", script, "conf"], env=env, capture_output=True, text=True, check=True).stdout
        yield {"port": port, "catalog_section": conf, "password": (folder / "pg" / "password").read_text().strip()}
    finally:
        subprocess.run(["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def team(postgres, tmp_path_factory):
    root = tmp_path_factory.mktemp("team")
    derby_conf = root / "derby.yaml"
    derby_conf.write_text("ingest:\n  image_size: 48\n  files_per_task: 8\n")
    postgres_conf = root / "postgres.yaml"
    postgres_conf.write_text(postgres["catalog_section"] + "ingest:\n  image_size: 48\n  files_per_task: 8\n"
                             "spark:\n  sql_server_cache_ttl_s: 3\n")
    base = dict(os.environ, SEMSPARK_HOME=str(root / "home"), SEMSPARK_MASTER="local[2]",
                PYSPARK_PYTHON=sys.executable, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                SEMSPARK_METASTORE_PASSWORD=postgres["password"])
    for night in range(2):
        generate(root / f"night{night}", 6, seed=500 + night, width=256, height=192)
    return {"root": root, "derby": dict(base, SEMSPARK_CONF=str(derby_conf)),
            "postgres": dict(base, SEMSPARK_CONF=str(postgres_conf))}


def semspark(env, *args, timeout=300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(VENV_BIN / "semspark"), *args], env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


COUNTS = ("SELECT (SELECT count(*) FROM sem.images) AS images, (SELECT count(*) FROM sem.files "
          "WHERE role = 'image') AS files, (SELECT count(*) FROM sem.current_labels) AS labels")


@pytest.fixture(scope="module")
def moved(team):
    semspark(team["derby"], "ingest", "--input", str(team["root"] / "night0"), "--labels", "folders")
    return semspark(team["postgres"], "catalog", "move-to-postgresql", "--json")


def test_an_embedded_catalog_moves_to_postgresql_with_one_command(team, moved):
    import json

    n = distinct_images(team["root"] / "night0")
    summary = json.loads(moved.stdout.strip().splitlines()[-1])
    # every table made again in PostgreSQL's catalog, each counted there equal to Derby's count
    assert summary["tables"]["images"] == n
    assert summary["tables"]["labels"] == n and {"current_labels"} <= set(summary["views"])
    home = Path(team["postgres"]["SEMSPARK_HOME"])
    assert not (home / "metastore" / "metastore_db").exists() and list(home.glob("metastore/metastore_db.moved-*"))


def test_beeline_is_answered_while_a_nightly_writes(team, moved):
    env = team["postgres"]
    port = free_port()
    server = start_sql_server(env, port, team["root"] / "sql-server.log")
    nightly = held = None
    try:
        # A connection kept open across the nightly (a BI tool's pool): one beeline session reading
        # its queries from a pipe, asked once before the nightly and again after it (and after the
        # server's cache TTL, 3 s here), in the same session.
        held = subprocess.Popen([str(VENV_BIN / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{port}/sem",
                                 "--outputformat=csv2", "--silent=true"], env=env, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        held.stdin.write(f"{COUNTS};\n")
        held.stdin.flush()
        held_lines: list[str] = []
        reader = threading.Thread(target=lambda: held_lines.extend(held.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 120
        while sum(1 for line in held_lines if line.strip().endswith("images,files,labels")) < 1 or \
                not any(re.fullmatch(r"\d+,\d+,\d+", line.strip()) for line in held_lines):
            assert held.poll() is None and time.monotonic() < deadline, f"the held session did not answer: {held_lines}"
            time.sleep(0.3)
        nightly = subprocess.Popen([str(VENV_BIN / "semspark"), "nightly", "--input", str(team["root"] / "night1"),
                                    "--labels", "folders"], env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)

        def beeline(query: str) -> list[str]:
            result = subprocess.run([str(VENV_BIN / "beeline"), "-u", f"jdbc:hive2://127.0.0.1:{port}/sem",
                                     "--outputformat=csv2", "--silent=true", "-e", query],
                                    env=env, capture_output=True, text=True, timeout=120)
            assert result.returncode == 0, result.stderr[-2000:]
            return [line for line in result.stdout.splitlines() if line.strip()]

        seen: list[str] = []
        # drained all along: a full pipe would stop the nightly in the middle of its work
        drain = threading.Thread(target=lambda: seen.extend(nightly.stderr), daemon=True)
        drain.start()
        deadline = time.monotonic() + 300
        while not any("processing" in line and "tasks" in line for line in list(seen)):
            assert nightly.poll() is None, "the nightly ended before it wrote anything:\n" + "".join(seen[-20:])
            assert time.monotonic() < deadline, "the nightly never started processing"
            time.sleep(0.5)
        first = distinct_images(team["root"] / "night0")
        during = beeline(COUNTS)                # answered by the moved catalog while the nightly writes
        assert nightly.poll() is None, "the nightly ended before the query was answered: no overlap shown"
        both = distinct_images(team["root"] / "night0", team["root"] / "night1")
        assert during[-2].endswith("images,files,labels")
        assert all(int(n) in (first, both) for n in during[-1].split(",")), during   # before or after its writes
        nightly.wait(timeout=300)
        drain.join(timeout=30)
        assert nightly.returncode == 0, "".join(seen[-40:])
        assert beeline(COUNTS)[-1] == f"{both},{both},{both}"
        time.sleep(4)
        held.stdin.write(f"{COUNTS};\n!quit\n")
        held.stdin.close()
        held.wait(timeout=120)
        reader.join(timeout=30)
        answers = [line.strip() for line in held_lines if re.fullmatch(r"\d+,\d+,\d+", line.strip())]
        first_counts = ",".join([str(distinct_images(team["root"] / "night0"))] * 3)
        assert answers == [first_counts, f"{both},{both},{both}"], held_lines   # the same session sees the night
    finally:
        for process in (held, nightly, server):
            stop_process_group(process)
