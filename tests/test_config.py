import pytest

from semspark.config import DEFAULT_CONFIG_PATH, Config, ConfigError, IngestConfig, SparkConfig, load_config


def write(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_shipped_config_is_the_documented_defaults():
    # conf/semspark.yaml and the dataclass defaults must not drift apart.
    assert load_config(DEFAULT_CONFIG_PATH) == Config()


def test_values_are_read_and_typed(tmp_path):
    config = load_config(write(tmp_path, "ingest:\n  image_size: 128\n  metadata_tolerance: 0.1\n"
                                         "  image_extensions: [tif]\ncatalog:\n  database: lab\n"))
    assert config.ingest.image_size == 128
    assert config.ingest.metadata_tolerance == 0.1
    assert config.ingest.image_extensions == ("tif",)
    assert config.catalog.database == "lab"
    assert config.spark == Config().spark


def test_unknown_key_is_an_error_naming_it(tmp_path):
    with pytest.raises(ConfigError, match=r"ingest\.imge_size"):
        load_config(write(tmp_path, "ingest:\n  imge_size: 128\n"))
    with pytest.raises(ConfigError, match=r"unknown key trainning"):
        load_config(write(tmp_path, "trainning: {}\n"))


@pytest.mark.parametrize("text, key, kind", [
    ("ingest:\n  image_size: big\n", "ingest.image_size", "integer"),
    ("ingest:\n  image_size: 12.5\n", "ingest.image_size", "integer"),
    ("spark:\n  ui_enabled: 'yes'\n", "spark.ui_enabled", "true or false"),
    ("ingest:\n  image_extensions: tif\n", "ingest.image_extensions", "list"),
    ("catalog: [sem]\n", "catalog", "mapping"),
])
def test_ill_typed_value_is_an_error_naming_it(tmp_path, text, key, kind):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert key in str(info.value) and kind in str(info.value)


def test_out_of_range_values_are_refused():
    with pytest.raises(ConfigError, match="metadata_tolerance"):
        IngestConfig(metadata_tolerance=1.5)
    with pytest.raises(ConfigError, match="dataset_dir"):
        IngestConfig(dataset_dir="../../etc")


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_retired_scale_reader_keys_are_ignored_with_a_warning(caplog):
    """A configuration written for the batching reader (ocr_batch_size, tesseract_cmd) still loads."""
    from semspark.config import config_from_mapping

    config = config_from_mapping({"ingest": {"ocr_batch_size": 48, "tesseract_cmd": "tesseract", "files_per_task": 8}})
    assert config.ingest.files_per_task == 8
    assert "ingest.ocr_batch_size is ignored" in caplog.text and "ingest.tesseract_cmd is ignored" in caplog.text


@pytest.mark.spark
def test_the_embedded_jvm_compiles_with_c1_only_and_keeps_the_catalogs_options(spark, semspark_home):
    """What the JVM itself reports it was started with (spark.driver_jit: c1, the default)."""
    arguments = list(spark.sparkContext._jvm.java.lang.management.ManagementFactory.getRuntimeMXBean()
                     .getInputArguments())
    assert "-XX:TieredStopAtLevel=1" in arguments
    # and the full JIT's code cache, not C1's 48 MB (filled within minutes: the compiler stopped)
    jvm = spark.sparkContext._jvm
    diagnostics = jvm.java.lang.management.ManagementFactory.getPlatformMXBean(
        jvm.java.lang.Class.forName("com.sun.management.HotSpotDiagnosticMXBean"))
    assert int(diagnostics.getVMOption("ReservedCodeCacheSize").getValue()) >= 240 * 1024 * 1024
    assert f"-Dderby.system.home={semspark_home / 'metastore'}" in arguments
    with pytest.raises(ConfigError, match="driver_jit"):
        SparkConfig(driver_jit="fast")
