#!/usr/bin/env bash
# Run the nightly job once with spark-submit: ingest what is new under INPUT, score it with the
# production model, record the run in sem.runs. Used by deploy/cron/semspark-nightly; safe to rerun.
#
#   deploy/nightly.sh INPUT [LABELS]          LABELS: folders (default), none, or a CSV path
#
# Environment:
#   SPARK_MASTER     spark://host:7077, yarn, k8s://...; default local[*]
#   SEMSPARK_CATALOG embedded (the Derby catalog under SEMSPARK_HOME; default with local[*]) or
#                    external (a Hive metastore from Spark's configuration; default otherwise)
#   SEMSPARK_HOME    working directory (default: var/ in the checkout); holds the lock file
#   SEMSPARK_CONF    config file (default: conf/semspark.yaml)
#   SPARK_SUBMIT_OPTS_EXTRA  more spark-submit options, e.g. "--properties-file conf/spark-gpu.conf";
#                    on the cluster of deploy/cluster.sh: "--properties-file var/cluster/submit.conf"
# Exit status: spark-submit's (non-zero with a message naming the failed step), or 75 when another
# nightly run still holds the lock (overlapping runs are refused, not queued).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
input=${1:?usage: deploy/nightly.sh INPUT [LABELS]}
labels=${2:-folders}
home=${SEMSPARK_HOME:-$root/var}
master=${SPARK_MASTER:-local[*]}
export PATH="$root/.venv/bin:$PATH"
export PYSPARK_PYTHON=${PYSPARK_PYTHON:-$root/.venv/bin/python}
export SEMSPARK_HOME=$home

mkdir -p "$home"
exec 9>"$home/nightly.lock"
if ! flock -n 9; then
    echo "semspark nightly: another nightly run holds $home/nightly.lock; not starting" >&2
    exit 75
fi

case "$master" in
    local*) catalog=${SEMSPARK_CATALOG:-embedded} ;;
    *) catalog=${SEMSPARK_CATALOG:-external} ;;
esac
flags=()
case "$catalog" in
    embedded) read -r -a flags <<< "$(semspark spark-conf)" ;;   # the Derby catalog of SEMSPARK_HOME
    external) ;;
    *) echo "semspark nightly: SEMSPARK_CATALOG must be embedded or external, not $catalog" >&2; exit 2 ;;
esac
label_args=()
[ "$labels" = none ] || label_args=(--labels "$labels")
read -r -a extra <<< "${SPARK_SUBMIT_OPTS_EXTRA:-}"

echo "semspark nightly: $(date -u +%FT%TZ) input=$input master=$master" >&2
spark-submit --master "$master" --name semspark-nightly "${flags[@]}" "${extra[@]}" \
    "$root/jobs/nightly.py" --input "$input" "${label_args[@]}"
