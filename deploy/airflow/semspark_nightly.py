"""Airflow DAG: the semspark nightly ingestion with SparkSubmitOperator.

Airflow runs in a virtual environment of its own (deploy/airflow/setup-venv.sh: Airflow 2.10 and
apache-airflow-providers-apache-spark, pinned). Create a Spark connection (default id
`spark_semspark`: host spark://MASTER:7077, or yarn, or k8s://..., or local[2] on one host), set
the Airflow Variables below, and put the checkout's .venv/bin first on the Airflow worker's PATH:
the provider runs the `spark-submit` it finds there, and it must be semspark's Spark (the provider
brings a pyspark of its own). The task submits jobs/nightly.py from the checkout; driver and
executors run the checkout's .venv (deploy/bootstrap.sh), so the checkout must be at the same path
on every node (a shared mount). With no metastore in the Spark configuration, the job uses
semspark's own catalog under SEMSPARK_HOME (the one the CLI uses), as conf/semspark.yaml says.
tests/test_airflow.py runs this DAG with `airflow dags test` on the embedded default.
One active run at a time: a night still running when the next one is due makes the next one wait,
never overlap.
"""
from __future__ import annotations

from datetime import datetime, timedelta

from airflow import DAG
from airflow.models import Variable
from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator

SEMSPARK_ROOT = Variable.get("semspark_root", default_var="/srv/semspark")        # the checkout
SEMSPARK_INPUT = Variable.get("semspark_input", default_var="/data/sem/raw")      # raw SEM files
SEMSPARK_HOME = Variable.get("semspark_home", default_var="/srv/semspark/var")    # shared by driver and executors
SEMSPARK_CONF = Variable.get("semspark_conf", default_var=f"{SEMSPARK_ROOT}/conf/semspark.yaml")

with DAG(
    dag_id="semspark_nightly",
    description="Ingest new SEM images, score them with the production model, record the run in sem.runs",
    schedule="30 1 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={"owner": "sem-data-team", "retries": 1, "retry_delay": timedelta(minutes=20)},
    tags=["semspark"],
) as dag:
    nightly = SparkSubmitOperator(
        task_id="nightly",
        conn_id="spark_semspark",
        application=f"{SEMSPARK_ROOT}/jobs/nightly.py",
        application_args=["--input", SEMSPARK_INPUT, "--labels", "folders"],
        name="semspark-nightly",
        conf={
            "spark.pyspark.python": f"{SEMSPARK_ROOT}/.venv/bin/python",
            "spark.executorEnv.SEMSPARK_HOME": SEMSPARK_HOME,
            "spark.sql.catalogImplementation": "hive",
            "spark.sql.session.timeZone": "UTC",
        },
        env_vars={"SEMSPARK_HOME": SEMSPARK_HOME, "SEMSPARK_CONF": SEMSPARK_CONF},
        execution_timeout=timedelta(hours=8),
        # the job is idempotent: a retry after a failure (or a kill) finishes what is missing
        retries=1,
    )
