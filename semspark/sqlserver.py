"""``semspark sql-server``: Spark's Thrift JDBC/ODBC server (HiveThriftServer2) on the catalog.

It is Spark's own server, started through spark-submit with the same catalog settings as every
other semspark command, so beeline, JDBC/ODBC clients and BI tools see the same tables and views.
It binds to 127.0.0.1 unless told otherwise: it has no authentication of its own (put it behind
Kerberos/LDAP or an SSH tunnel before opening it to a network).
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from semspark.config import Config, semspark_home
from semspark.session import catalog_conf

THRIFT_SERVER_CLASS = "org.apache.spark.sql.hive.thriftserver.HiveThriftServer2"


def spark_bin(tool: str) -> str:
    """A Spark launcher (spark-submit, beeline, spark-sql) of the pip-installed pyspark."""
    import pyspark

    path = Path(pyspark.__file__).parent / "bin" / tool
    if path.exists():
        return str(path)
    found = shutil.which(tool)
    if found is None:
        raise FileNotFoundError(f"{tool} not found in {path.parent} or on PATH; is pyspark installed?")
    return found


def launcher_env() -> dict[str, str]:
    """Spark's shell launchers find SPARK_HOME with whatever `python3` is first on PATH; point them
    at this interpreter's pyspark instead."""
    import pyspark

    env = dict(os.environ)
    env.setdefault("SPARK_HOME", str(Path(pyspark.__file__).parent))
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def thrift_server_command(config: Config, host: str, port: int, master: str | None = None) -> list[str]:
    home = semspark_home()
    for sub in ("warehouse", "metastore", "tmp"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    # The catalog's settings in a file only this user reads: a PostgreSQL metastore's password must
    # not appear on a command line, which every user of the host can list.
    properties = home / "tmp" / "sql-server.conf"
    properties.touch(mode=0o600)
    properties.chmod(0o600)
    properties.write_text("".join(f"{key} {value}\n" for key, value in catalog_conf(config, home).items()))
    return [spark_bin("spark-submit"), "--class", THRIFT_SERVER_CLASS, "--name", "semspark-sql-server",
            "--master", master or os.environ.get("SEMSPARK_MASTER", config.spark.local_master),
            "--driver-memory", config.spark.driver_memory,
            "--properties-file", str(properties), "--conf", "spark.sql.session.timeZone=UTC",
            # A session caches a table's file listing; another process's append (a nightly) would
            # stay unseen by a connection kept open until REFRESH TABLE. The TTL bounds that.
            "--conf", f"spark.sql.metadataCacheTTLSeconds={config.spark.sql_server_cache_ttl_s}",
            "--conf", f"spark.local.dir={home / 'tmp' / 'spark'}",
            "spark-internal",
            "--hiveconf", f"hive.server2.thrift.bind.host={host}",
            "--hiveconf", f"hive.server2.thrift.port={port}"]


def beeline_url(host: str, port: int, database: str) -> str:
    return f"jdbc:hive2://{host}:{port}/{database}"
