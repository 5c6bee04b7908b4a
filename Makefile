# The two commands of the README. Each first makes sure of the environment (deploy/bootstrap.sh),
# which takes a second or two when everything is already installed.
.PHONY: demo test env bench clean-var package cluster-start cluster-stop cluster-status

env:
	@bash deploy/bootstrap.sh

demo: env
	.venv/bin/semspark demo

# Airflow lives in a venv of its own (.airflow-venv): tests/test_airflow.py runs the DAG with it.
test: env
	@bash deploy/airflow/setup-venv.sh >/dev/null
	.venv/bin/python -m pytest -q tests

bench: env
	.venv/bin/python bench/ingest_bench.py
	.venv/bin/python bench/train_bench.py

clean-var:
	rm -rf var

# The project for spark-submit: wheel + environment archive in dist/ (deploy/package.sh).
package: env
	bash deploy/package.sh

# A standalone Spark cluster on this machine (master + 2 workers on 127.0.0.1, authenticated).
cluster-start: env
	bash deploy/cluster.sh start

cluster-stop:
	bash deploy/cluster.sh stop

cluster-status:
	bash deploy/cluster.sh status
