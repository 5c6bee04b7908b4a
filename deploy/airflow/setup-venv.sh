#!/usr/bin/env bash
# Airflow in a virtual environment of its own (it cannot share semspark's: its pins clash with the
# ML stack), for the scheduler host and for the test that runs the DAG (tests/test_airflow.py).
#
#   deploy/airflow/setup-venv.sh [VENV]      default: .airflow-venv in the checkout
#
# Installs the pinned Airflow and its Spark provider from the package index; quick when the stamp
# says they are there. Prints the venv's path.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.airflow-venv}"
python=${SEMSPARK_PYTHON:-python3.11}
pins=("apache-airflow==2.10.5" "apache-airflow-providers-apache-spark==5.3.4")
stamp="$venv/.semspark-airflow"

if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
    echo "[airflow] installing ${pins[*]} into $venv (a few minutes the first time)" >&2
    [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
    "$venv/bin/pip" install -q "${pins[@]}" >&2
    "$venv/bin/airflow" version >/dev/null
    echo "${pins[*]}" > "$stamp"
fi
echo "$venv"
