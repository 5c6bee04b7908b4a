"""Typed configuration loaded from YAML in conf/.

Every section is a frozen dataclass. Loading validates as it goes: an unknown key, or a value of the
wrong type, raises :class:`ConfigError` naming the key path (``ingest.image_size``), so a typo in a
config file fails before any Spark job starts.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG_PATH = PROJECT_ROOT / "conf" / "semspark.yaml"


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message names the key."""


@dataclass(frozen=True)
class CatalogConfig:
    database: str = "sem"
    # derby: embedded, zero setup, one process at a time; postgresql: a PostgreSQL database holds
    # the Hive metastore, and the SQL server, spark-sql users and the nightly run at the same time
    metastore: str = "derby"
    postgresql_url: str = "jdbc:postgresql://127.0.0.1:5433/semspark_metastore"
    postgresql_user: str = "semspark"
    postgresql_password_env: str = "SEMSPARK_METASTORE_PASSWORD"   # the password is read from this variable
    jdbc_driver_jar: str = "/usr/share/java/postgresql.jar"         # Debian's libpostgresql-jdbc-java

    def __post_init__(self) -> None:
        _require(self.metastore in ("derby", "postgresql"), "catalog.metastore must be derby or postgresql")
        _require(self.postgresql_url.startswith("jdbc:postgresql://"),
                 "catalog.postgresql_url must be a jdbc:postgresql://HOST:PORT/DATABASE URL")


@dataclass(frozen=True)
class SparkConfig:
    app_name: str = "semspark"
    # Used only when no master is given by spark-submit or the environment.
    local_master: str = "local[*]"
    shuffle_partitions: int = 8
    ui_enabled: bool = False
    driver_memory: str = "4g"
    # The embedded default's JVM compiles with C1 only ("c1": quick compiles, for the short runs of
    # a command on few cores) or with C1 then C2 ("full"). On 2 cores (bench/night_bench.py): a night
    # of 40 images 26-27 s instead of 30-32 s, an ingest of 2,000 images 37 s instead of 44 s (C2's
    # compiler threads compete with the Python workers). The SQL server always runs with the full JIT.
    driver_jit: str = "c1"
    # How old the SQL server's knowledge of a table's files may get: a connection kept open (a BI
    # tool's pool) sees what a nightly appended within this many seconds, without REFRESH TABLE.
    sql_server_cache_ttl_s: int = 60
    # The embedded JVM maps the classes an earlier run of the same command loaded ("auto": made by a
    # command's first run on the machine, when its JVM exits; "off": never), kept in
    # class_archive_dir ("" = $XDG_CACHE_HOME/semspark/jvm). On 2 cores (bench/night_bench.py) a
    # night of 40 images 19.3 and 21.5 s instead of 23.0 and 24.9 s (medians of two runs). See
    # semspark/class_archive.py.
    class_archive: str = "auto"
    class_archive_dir: str = ""
    # JVM options the embedded driver gets after semspark's own (the catalog's Derby home, the JIT
    # settings), e.g. a class-loading log or an agent; spark.driver.extraJavaOptions in ``extra``
    # replaces them all instead.
    driver_java_options: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _require(self.driver_jit in ("c1", "full"), "spark.driver_jit must be c1 or full")
        _require(self.class_archive in ("auto", "off"), "spark.class_archive must be auto or off")
        _require(self.sql_server_cache_ttl_s >= 1, "spark.sql_server_cache_ttl_s must be at least 1")


@dataclass(frozen=True)
class IngestConfig:
    image_size: int = 299
    max_pixels: int = 150_000_000
    max_file_bytes: int = 1 << 30
    image_extensions: tuple[str, ...] = ("tif", "tiff", "png", "jpg", "jpeg", "bmp")
    sidecar_extensions: tuple[str, ...] = ("txt",)
    files_per_task: int = 64
    metadata_tolerance: float = 0.05
    tessdata_dir: str = ""          # folder of eng.traineddata; "" = $TESSDATA_PREFIX or Debian's
    dataset_dir: str = "datasets/images"
    row_group_size_mb: int = 32

    def __post_init__(self) -> None:
        _require(self.image_size >= 16, "ingest.image_size must be at least 16")
        _require(self.max_pixels > 0 and self.max_file_bytes > 0, "ingest limits must be positive")
        _require(self.files_per_task > 0, "ingest.files_per_task must be positive")
        _require(0 < self.metadata_tolerance < 1, "ingest.metadata_tolerance must be within (0, 1)")
        _require(not Path(self.dataset_dir).is_absolute() and ".." not in Path(self.dataset_dir).parts,
                 "ingest.dataset_dir must be a relative path inside SEMSPARK_HOME")


@dataclass(frozen=True)
class InferConfig:
    batch_size: int = 64            # images per model call in a Spark task
    images_per_task: int = 1000     # at most this many images per Spark task (more tasks, more cores)
    threads_per_task: int = 0       # TensorFlow threads per task on CPU; 0 = auto (idle cores, up to an executor's)
    engine: str = "auto"            # auto (TensorFlow Lite on CPU tasks, TensorFlow on GPUs) | tflite | tensorflow
    tflite_max_images_per_task: int = 400   # auto: larger tasks run TensorFlow (faster kernels, slower import)
    driver_max_images: int = 400    # local mode: a run of at most this many (TFLite) scored in the driver; 0 = never

    def __post_init__(self) -> None:
        _require(self.engine in ("auto", "tflite", "tensorflow"), "infer.engine must be auto, tflite or tensorflow")
        _require(self.tflite_max_images_per_task >= 0, "infer.tflite_max_images_per_task must be 0 or more")
        _require(1 <= self.batch_size <= 4096, "infer.batch_size must be within 1..4096")
        _require(self.images_per_task >= 1, "infer.images_per_task must be positive")
        _require(self.threads_per_task >= 0, "infer.threads_per_task must be 0 or more")
        _require(self.driver_max_images >= 0, "infer.driver_max_images must be 0 or more")


@dataclass(frozen=True)
class QualityConfig:
    """Gates a finished run must pass, else the command exits 3 (see semspark/errors.py)."""
    max_quarantined_share: float = 0.5   # of the files a run processed; above it the run is gated
    require_scored: bool = True          # images to score and none scored: gated

    def __post_init__(self) -> None:
        _require(0 <= self.max_quarantined_share <= 1, "quality.max_quarantined_share must be within 0..1")


@dataclass(frozen=True)
class CompactionConfig:
    """When small files are rewritten into fewer (``semspark compact``, and the nightly after its work)."""
    nightly: bool = True                 # the nightly compacts what is over the thresholds
    table_files: int = 16                # a table (or a partition of one) with more files than this
    dataset_files_per_bin: int = 16      # a scale bin of the dataset with more files than this
    target_file_mb: int = 128            # a compacted table file holds about this much

    def __post_init__(self) -> None:
        _require(self.table_files >= 1 and self.dataset_files_per_bin >= 1,
                 "compaction.table_files and compaction.dataset_files_per_bin must be at least 1")
        _require(self.target_file_mb >= 1, "compaction.target_file_mb must be at least 1")


@dataclass(frozen=True)
class AnalysisConfig:
    scale_bins: tuple[str, ...] = ("1um", "2um")   # the paper's subset; [] = every bin
    features: str = "embedding"                    # embedding (penultimate layer) | logits
    coding_dim: str = "10"                         # an integer, or auto = rounded 2-NN dimension
    max_collect_bytes: int = 8_000_000_000         # rows x dimensions x 4 collected to the driver
    max_condensed_gb: float = 12.0                 # complete linkage's distance matrix
    heatmap_images: int = 400                      # labelled images of Figures 4 and 5
    cluster_ks: tuple[int, ...] = (10, 50, 200)    # cuts written to the clusters table
    id_repetitions: int = 3                        # 2-NN repetitions per subset size (Figure 3)
    id_max_points: int = 20000                     # the scale analysis starts from at most this many
    density_neighbours: int = 20                   # density peaks: rho = 1 / distance to this neighbour
    autoencoder_epochs: int = 60
    uniform_repetitions: int = 3
    gallery_method: str = "ward"
    gallery_k: int = 10
    gallery_clusters: int = 8                      # the largest clusters at gallery_k
    gallery_images: int = 8                        # thumbnails per cluster
    seed: int = 0

    def __post_init__(self) -> None:
        _require(self.features in ("embedding", "logits"), "analysis.features must be embedding or logits")
        _require(self.coding_dim == "auto" or (self.coding_dim.isdigit() and int(self.coding_dim) >= 1),
                 "analysis.coding_dim must be a positive integer or auto")
        _require(self.max_collect_bytes > 0 and self.max_condensed_gb > 0, "analysis limits must be positive")
        _require(self.heatmap_images >= 2, "analysis.heatmap_images must be at least 2")
        _require(all(k >= 2 for k in self.cluster_ks), "analysis.cluster_ks must be at least 2 each")
        _require(self.id_repetitions >= 1 and self.id_max_points >= 20, "analysis.id_* out of range")
        _require(self.density_neighbours >= 2, "analysis.density_neighbours must be at least 2")
        _require(self.gallery_k >= 2 and self.gallery_clusters >= 1 and self.gallery_images >= 1,
                 "analysis.gallery_* out of range")


@dataclass(frozen=True)
class WebConfig:
    host: str = "127.0.0.1"          # loopback: give 0.0.0.0 (or an address) to serve others, behind TLS
    port: int = 8080
    users_file: str = "web/users.yaml"   # in SEMSPARK_HOME: accounts (hashed passwords) and API tokens
    sso_header: str = ""             # e.g. X-Remote-User: the user a single-sign-on proxy in front vouches for
    page_size: int = 100             # gallery images per page
    thumbnail_px: int = 160
    secure_cookies: bool = False     # true when users reach the app over HTTPS: the login cookie never goes over HTTP
    write_wait_s: float = 30.0       # a correction waits this long for the writer lock, then answers 503 (retry)

    def __post_init__(self) -> None:
        _require(0 < self.port < 65536, "web.port must be a TCP port (1-65535)")
        _require(1 <= self.page_size <= 500, "web.page_size must be 1 to 500")
        _require(32 <= self.thumbnail_px <= 512, "web.thumbnail_px must be 32 to 512")
        _require(0 < self.write_wait_s <= 3600, "web.write_wait_s must be over 0 and at most 3600 seconds")


@dataclass(frozen=True)
class Config:
    catalog: CatalogConfig = field(default_factory=CatalogConfig)
    spark: SparkConfig = field(default_factory=SparkConfig)
    ingest: IngestConfig = field(default_factory=IngestConfig)
    infer: InferConfig = field(default_factory=InferConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    compaction: CompactionConfig = field(default_factory=CompactionConfig)
    web: WebConfig = field(default_factory=WebConfig)


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def load_config(path: str | os.PathLike | None = None) -> Config:
    """Load and validate a YAML config; with no path, ``$SEMSPARK_CONF`` or ``conf/semspark.yaml``.

    A missing default file gives the built-in defaults; a missing file that was asked for is an error.
    """
    explicit = path is not None or "SEMSPARK_CONF" in os.environ
    chosen = Path(path or os.environ.get("SEMSPARK_CONF") or DEFAULT_CONFIG_PATH)
    if not chosen.exists():
        if explicit:
            raise ConfigError(f"config file {chosen} does not exist")
        return Config()
    try:
        raw = yaml.safe_load(chosen.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {chosen} is not valid YAML: {exc}") from exc
    return config_from_mapping(raw, source=str(chosen))


def config_from_mapping(raw: Any, source: str = "<config>") -> Config:
    return _build(Config, raw, prefix="", source=source)


# Keys an older semspark read that no longer mean anything: ignored with a warning, so that an
# existing configuration keeps working (the scale reader no longer batches or starts processes).
RETIRED_KEYS = {"ingest.ocr_batch_size": "labels are read one image at a time",
                "ingest.tesseract_cmd": "Tesseract runs through its C API; see ingest.tessdata_dir",
                "ingest.ocr_timeout_s": "no Tesseract process is started any more"}


def _build(cls: type, raw: Any, prefix: str, source: str) -> Any:
    if not isinstance(raw, Mapping):
        where = prefix.rstrip(".") or "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(raw).__name__}")
    retired = [key for key in raw if f"{prefix}{key}" in RETIRED_KEYS]
    for key in retired:
        logging.getLogger(__name__).warning("%s: %s%s is ignored: %s", source, prefix, key,
                                            RETIRED_KEYS[f"{prefix}{key}"])
    raw = {key: value for key, value in raw.items() if key not in retired}
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key {prefix}{unknown[0]!s}; known keys here: {', '.join(sorted(known))}"
        )
    values = {name: _coerce(hints[name], raw[name], f"{prefix}{name}", source) for name in raw}
    return cls(**values)


def _coerce(tp: Any, value: Any, key: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, prefix=key + ".", source=source)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key, source)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]", source) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{source}: {key} must be a mapping, got {value!r}")
        return {str(k): str(v) for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{source}: {key} has an unsupported type {tp!r}")  # pragma: no cover


def semspark_home() -> Path:
    """The one working directory for warehouse, metastore, datasets and models.

    ``$SEMSPARK_HOME``, or ``var/`` in the project checkout. Installed from the wheel (a cluster's
    environment, the Docker image) there is no checkout, and site-packages is no place for data.
    """
    if os.environ.get("SEMSPARK_HOME"):
        return Path(os.environ["SEMSPARK_HOME"]).resolve()
    if not (PROJECT_ROOT / "pyproject.toml").exists():
        raise ConfigError("SEMSPARK_HOME is not set: set it to semspark's working folder (a volume every "
                          "driver and executor mounts at the same path)")
    return (PROJECT_ROOT / "var").resolve()
