#!/usr/bin/env bash
# Airflow in a virtual environment of its own (it cannot share semspark's: its pins clash with the
# ML stack), for the scheduler host and for the test that runs the DAG (tests/test_airflow.py).
#
#   deploy/airflow/setup-venv.sh [VENV]
#
# VENV given: Airflow is installed there. Without it, .airflow-venv in the checkout, a link to a venv
# kept per machine under $XDG_CACHE_HOME/semspark/airflow-<pins> (SEMSPARK_AIRFLOW_CACHE moves it):
# nothing in it belongs to a checkout, so a second checkout of the same pins (CI's clean clone, a
# second working copy) links it in a second instead of installing Airflow again (about a minute).
# A .airflow-venv that is a real folder (made by an earlier semspark) is kept and used as it is.
#
# Installs the pinned Airflow and its Spark provider from the package index; quick when the stamp
# says they are there. Prints the venv's path.
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
python=${SEMSPARK_PYTHON:-python3.11}
pins=("apache-airflow==2.10.5" "apache-airflow-providers-apache-spark==5.3.4")

install() {  # VENV: Airflow there, unless its stamp says it is
    local venv=$1 stamp="$1/.semspark-airflow"
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "${pins[*]}" ]; then
        echo "[airflow] installing ${pins[*]} into $venv (a minute or two the first time)" >&2
        [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
        "$venv/bin/pip" install -q "${pins[@]}" >&2
        "$venv/bin/airflow" version >/dev/null
        echo "${pins[*]}" > "$stamp"
    fi
}

if (($#)); then
    install "$1"
    echo "$1"
    exit 0
fi

link="$root/.airflow-venv"
if [ -d "$link" ] && [ ! -L "$link" ]; then   # a folder of its own: an earlier layout, still good
    install "$link"
    echo "$link"
    exit 0
fi
cache="${SEMSPARK_AIRFLOW_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/semspark}"
shared="$cache/airflow-$(printf '%s\n' "${pins[@]}" "$("$python" -c 'import platform, sys; print(sys.version, platform.machine())')" \
                         | sha256sum | cut -c1-16)"
mkdir -p "$cache"
(   # two checkouts setting up at once install it once
    flock 9
    install "$shared"
) 9>"$shared.lock"
ln -sfn "$shared" "$link"
echo "$link"
