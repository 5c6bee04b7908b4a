"""The one place a SparkSession is built.

Embedded default (``semspark <command>`` or ``python jobs/x.py``): ``local[*]``, Hive catalog on an
embedded Derby metastore, warehouse and metastore under ``$SEMSPARK_HOME``.

Under spark-submit the master and the catalog come from Spark's own configuration (``--master``,
``--conf``, ``spark-defaults.conf``, ``hive-site.xml``); semspark enables the Hive catalog and
leaves everything the operator set alone. When nothing there names a metastore, the run uses
semspark's catalog as the CLI does (conf/semspark.yaml's, under SEMSPARK_HOME) rather than Spark's
default of a new Derby catalog in the working folder. ``semspark spark-conf`` prints the ``--conf``
flags that say the same explicitly.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
import os
import sys
import time
import warnings
from pathlib import Path

from semspark.config import Config, semspark_home

log = logging.getLogger(__name__)


def console_progress() -> dict[str, str]:
    """Spark's progress bars on a terminal only: they redraw one line with carriage returns, fine
    to watch, noise in a scheduler's log file or a redirected demo, where semspark's own progress
    lines say what happens."""
    return {"spark.ui.showConsoleProgress": "true" if sys.stderr.isatty() else "false"}


def _under_spark_submit() -> bool:
    # spark-submit starts the JVM first and hands the Python driver its gateway through these.
    return "PYSPARK_GATEWAY_PORT" in os.environ


class MetastoreError(RuntimeError):
    """The configured metastore cannot be used (no password, no JDBC driver); the message says what to do."""


def catalog_conf(config: Config, home: Path | None = None, with_password: bool = True) -> dict[str, str]:
    """Spark conf of the catalog ``config`` names: warehouse and scratch space under SEMSPARK_HOME,
    the metastore in embedded Derby (there too) or in PostgreSQL. The PostgreSQL password comes from
    the environment variable ``catalog.postgresql_password_env``; ``with_password=False`` leaves it
    out (for command lines, which every user of the host can read)."""
    catalog = config.catalog
    if catalog.metastore == "derby":
        return embedded_catalog_conf(home)
    home = home or semspark_home()
    if not Path(catalog.jdbc_driver_jar).is_file():
        raise MetastoreError(f"the PostgreSQL JDBC driver {catalog.jdbc_driver_jar} is missing: apt-get install "
                             "libpostgresql-jdbc-java, or set catalog.jdbc_driver_jar")
    conf = {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(home / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL": catalog.postgresql_url,
        "spark.hadoop.javax.jdo.option.ConnectionDriverName": "org.postgresql.Driver",
        "spark.hadoop.javax.jdo.option.ConnectionUserName": catalog.postgresql_user,
        # The schema is made once, whole, by `semspark catalog init`: made lazily, table by table, it
        # deadlocks PostgreSQL (DataNucleus adds a foreign key from a second connection while the
        # first one's transaction holds the table it refers to). Missing, it is a clear error.
        "spark.hadoop.datanucleus.schema.autoCreateAll": "false",
        "spark.hadoop.hive.metastore.schema.verification": "false",
        "spark.hadoop.hive.exec.scratchdir": str(home / "tmp" / "hive"),
        "spark.driver.extraClassPath": catalog.jdbc_driver_jar,
    }
    if with_password:
        conf["spark.hadoop.javax.jdo.option.ConnectionPassword"] = metastore_password(config)
    return conf


def metastore_password(config: Config) -> str:
    variable = config.catalog.postgresql_password_env
    value = os.environ.get(variable)
    if not value:
        raise MetastoreError(f"catalog.metastore is postgresql: set {variable} to the password of role "
                             f"{config.catalog.postgresql_user} (deploy/metastore.sh start prints where it is)")
    return value


def embedded_catalog_conf(home: Path | None = None) -> dict[str, str]:
    """Spark conf that puts warehouse, Derby metastore and scratch space under SEMSPARK_HOME."""
    home = home or semspark_home()
    metastore = home / "metastore"
    return {
        "spark.sql.catalogImplementation": "hive",
        "spark.sql.warehouse.dir": str(home / "warehouse"),
        "spark.hadoop.javax.jdo.option.ConnectionURL":
            f"jdbc:derby:;databaseName={metastore / 'metastore_db'};create=true",
        "spark.hadoop.hive.exec.scratchdir": str(home / "tmp" / "hive"),
        # One option, no spaces: `spark-submit $(semspark spark-conf)` must split into clean words.
        # Derby writes derby.log into its system home.
        "spark.driver.extraJavaOptions": f"-Dderby.system.home={metastore}",
    }


def build_session(config: Config, app_name: str | None = None, extra: dict[str, str] | None = None,
                  class_archive: bool = False):
    """Create (or join) the SparkSession for a semspark command.

    ``extra`` is applied last in the embedded default (tests use it for ``local[2]`` and temporary
    folders); under spark-submit it fills in only what the operator did not set. ``class_archive``:
    the embedded JVM maps (or makes) the command's class archive (``spark.class_archive``, see
    semspark/class_archive.py); the plan is kept on the session for ``session_scope`` to finish.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    _driver_in_utc()
    home = semspark_home()
    submitted = _under_spark_submit()
    archive_plan = None
    builder = SparkSession.builder.appName(app_name or config.spark.app_name).enableHiveSupport()

    if submitted:
        SparkContext._ensure_initialized()
        given = SparkContext._jvm.org.apache.spark.SparkConf(True)  # what spark-submit was told
        # semspark's session settings hold on a cluster too (UTC timestamps, Arrow, few shuffle
        # partitions for catalog-sized tables, safe-path workers), unless the operator set them.
        defaults = {**_session_defaults(config), **config.spark.extra, **(extra or {})}
        if config.catalog.metastore == "postgresql":
            # the password from the environment, never from a command line (`semspark spark-conf`
            # prints the rest): the metastore client starts after this, inside the driver's JVM
            defaults["spark.hadoop.javax.jdo.option.ConnectionPassword"] = metastore_password(config)
        if not _metastore_given(given):
            # Nobody said where the catalog is (no --conf, no hive-site.xml): semspark's own, as the
            # CLI uses it, rather than Spark's default of a new Derby catalog in the working folder.
            # (Settings of the driver's JVM itself, already started, are left out.)
            for key, value in catalog_conf(config, home).items():
                if not key.startswith("spark.driver."):
                    defaults.setdefault(key, value)
            log.info("spark-submit run: master from Spark's configuration; no metastore configured there, so "
                     "semspark's catalog under %s", home)
        else:
            log.info("spark-submit run: master and catalog from Spark's configuration")
        for key, value in defaults.items():
            if not given.contains(key):
                builder = builder.config(key, value)
    else:
        # Workers run the driver's interpreter (the project's .venv), not whatever python3 is first
        # on PATH; pyspark reads this variable when the SparkContext starts.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        # petastorm 0.13 still calls pyarrow APIs deprecated since 2.0: one warning per file, noise.
        os.environ.setdefault("PYTHONWARNINGS", "ignore::FutureWarning")
        # TensorFlow's start-up banners, once per Python worker that loads a model, are noise.
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        warnings.filterwarnings("ignore", category=FutureWarning)
        for sub in ("warehouse", "metastore", "tmp"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        settings: dict[str, str] = {
            "spark.master": os.environ.get("SEMSPARK_MASTER", config.spark.local_master),
            "spark.driver.memory": config.spark.driver_memory,
            "spark.ui.enabled": str(config.spark.ui_enabled).lower(),
            "spark.local.dir": str(home / "tmp" / "spark"),
            **_session_defaults(config),
        }
        settings.update(catalog_conf(config, home))
        if config.spark.driver_jit == "c1":
            options = settings.get("spark.driver.extraJavaOptions", "")
            # C1 alone gets a 48 MB code cache from the JVM (the full JIT 240 MB); Spark compiles
            # classes for every query, and a process that runs for minutes (a bulk load, the
            # benchmarks' 40 nights) filled it: "CodeCache is full. Compiler has been disabled",
            # then everything new ran interpreted. The full JIT's size, reserved, not committed.
            settings["spark.driver.extraJavaOptions"] = \
                f"{options} -XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m".strip()
        if config.spark.driver_java_options:
            options = settings.get("spark.driver.extraJavaOptions", "")
            settings["spark.driver.extraJavaOptions"] = f"{options} {config.spark.driver_java_options}".strip()
        settings.update(config.spark.extra)
        settings.update(extra or {})
        if class_archive and config.spark.class_archive == "auto" and SparkContext._active_spark_context is None:
            from semspark import class_archive as archives

            archive_plan = archives.plan(app_name or config.spark.app_name, settings, config.spark.class_archive_dir)
            if archive_plan is not None:
                settings["spark.driver.extraJavaOptions"] = archive_plan.java_options(
                    settings.get("spark.driver.extraJavaOptions", ""))
        for key, value in settings.items():
            builder = builder.config(key, value)
        log.info("embedded Spark: %s, catalog under %s (metastore: %s)", settings["spark.master"], home,
                 config.catalog.metastore)

    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    _quiet_hive(spark)
    spark._semspark_class_archive = archive_plan
    return spark


def driver_in_utc() -> None:
    """``_driver_in_utc`` for a session semspark did not build (a notebook's, an application's): the
    catalog's first use in every command (``catalog.ensure_tables``) calls it, so that semspark's
    times are right whoever started Spark. Says so when it changes the process's local time zone."""
    if time.timezone == 0 and not time.daylight:
        return
    log.warning("semspark records times in UTC and PySpark converts them with the Python process's local "
                "time zone (%s): this process now runs in UTC (start it with TZ=UTC to avoid this)",
                "/".join(time.tzname))
    _driver_in_utc()


def _driver_in_utc() -> None:
    """The driver's Python on UTC. PySpark turns a naive datetime into a timestamp with the process's
    local time zone (time.mktime), whatever spark.sql.session.timeZone says, and collected timestamps
    come back in it: on a machine set to Europe/Berlin every time semspark recorded (``utc_now``,
    naive UTC) was stored an hour early, and 5.5 hours on one set to Asia/Kolkata. The tables, their
    SQL (session time zone UTC) and pyarrow's reads of their files are all in UTC; so is the driver
    now, its log lines included. (Set before the embedded JVM starts, which inherits it.)"""
    if os.environ.get("TZ") != "UTC":
        os.environ["TZ"] = "UTC"
        time.tzset()


def _metastore_given(given) -> bool:
    """Did the operator configure the catalog's metastore for this spark-submit run?"""
    if given.contains("spark.hadoop.javax.jdo.option.ConnectionURL") or given.contains("spark.sql.warehouse.dir"):
        return True
    if given.contains("spark.sql.catalogImplementation") and given.get("spark.sql.catalogImplementation") != "hive":
        return True
    from pyspark import SparkContext

    loader = SparkContext._jvm.java.lang.Thread.currentThread().getContextClassLoader()
    return loader.getResource("hive-site.xml") is not None


def _session_defaults(config: Config) -> dict[str, str]:
    return {
        "spark.sql.shuffle.partitions": str(config.spark.shuffle_partitions),
        "spark.sql.session.timeZone": "UTC",
        # Arrow makes the pandas UDFs of ingest and infer fast.
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        # Spark starts its Python workers with `python -m`, which puts their working directory
        # (the driver's, in local mode) first on their path: started from a folder holding another
        # semspark/ (a checkout, another version) the workers would import that one while the
        # driver runs the installed one. Safe-path workers import what is installed (Python 3.11).
        "spark.executorEnv.PYTHONSAFEPATH": "1",
    }


def _quiet_hive(spark) -> None:
    """Hive's metastore client warns on every partition it adds and on Spark's own settings."""
    try:
        jvm = spark.sparkContext._jvm
        level = jvm.org.apache.logging.log4j.Level.ERROR
        for name in ("hive.log", "org.apache.hadoop.hive.conf.HiveConf", "org.apache.hadoop.hive.metastore",
                     "org.apache.hadoop.hive.ql.session.SessionState"):
            jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, level)
    except Exception:  # logging is a nicety; never fail a job over it
        log.debug("could not lower Hive's log level", exc_info=True)


def spark_submit_flags(config: Config, home: Path | None = None) -> list[str]:
    """``--conf k=v`` arguments that give a spark-submit run the catalog of ``config`` (without the
    PostgreSQL password: semspark's jobs read it from the environment)."""
    flags: list[str] = []
    for key, value in catalog_conf(config, home, with_password=False).items():
        flags += ["--conf", f"{key}={value}"]
    return flags


def import_in_background(modules: tuple[str, ...]):
    """Import ``modules`` in a daemon thread and return it. Python's import locks make a module
    the main thread asks for meanwhile wait for this import rather than run twice. A module that
    fails to import is left alone: the import where it is used says why."""
    import importlib
    import threading

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:   # noqa: BLE001 (reported by the real import, in context)
                log.debug("could not import %s ahead of time", name, exc_info=True)

    thread = threading.Thread(target=run, name="semspark-imports", daemon=True)
    thread.start()
    return thread


@contextmanager
def session_scope(config: Config, app_name: str | None = None, extra: dict[str, str] | None = None):
    """A session for one command: stopped at the end only if this command started it.

    A session that was already running (a notebook, the test suite) is left running.
    """
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    from semspark.class_archive import finish

    existing = SparkSession.getActiveSession()
    spark = existing or build_session(config, app_name=app_name, extra=extra, class_archive=True)
    try:
        yield spark
    finally:
        if existing is None:
            _stop_for_exit(spark)
            finish(getattr(spark, "_semspark_class_archive", None), SparkContext._gateway)


def _stop_for_exit(spark) -> None:
    """Stop a command's own session, the process ending right after. PySpark's stop() then waits
    for its accumulator server's handler, which polls its socket once a second: up to a second
    (0.9 s measured) of a nightly that takes 15. The JVM's side stops as usual; the handler is told
    to end at its next poll, and its daemon thread goes with the process."""
    server = getattr(spark.sparkContext, "_accumulatorServer", None)
    if server is not None:
        server.server_shutdown = True
        spark.sparkContext._accumulatorServer = None
    spark.stop()
