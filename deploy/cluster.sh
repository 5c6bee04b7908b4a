#!/usr/bin/env bash
# A Spark standalone cluster on this machine, from the pip-installed Spark of .venv: one master and
# N workers, each its own JVM with its own cores, every port bound to 127.0.0.1, spark.authenticate
# on with a secret generated at the first start (kept in DIR, mode 0600), RPC encryption on.
#
#   deploy/cluster.sh start  [--dir DIR] [--port 7077] [--webui-port 8080] [--workers 2]
#                            [--cores 1] [--memory 3g] [--format tar|tar.gz] [--gpus-per-worker 0]
#   deploy/cluster.sh submit [--dir DIR] APP.py [ARGS...]   spark-submit APP.py to the cluster
#   deploy/cluster.sh status [--dir DIR]
#   deploy/cluster.sh stop   [--dir DIR]
#
# start is idempotent: it starts what is not running (a worker that died comes back) and packages the
# environment for executors (deploy/package.sh) when the project changed. DIR (default
# $SEMSPARK_HOME/cluster, i.e. var/cluster) holds:
#   cluster.env   MASTER_URL, WEBUI_URL, ports (sourced by scripts and tests)
#   daemon.conf   what master and workers read: the secret, loopback, worker clean-up
#   submit.conf   what spark-submit reads: the master, the secret, and the environment shipped to
#                 executors (--archives ...#environment, started by executor-python.sh)
#   submit-provisioned.conf   the same, with executors on env/ instead of a shipped archive
#   env/          the environment archive unpacked once (what an image or a node provisioning does)
#   logs/ pids/ work/ local/   daemon logs, pid files, workers' application folders, scratch
#
# submit runs `spark-submit --properties-file DIR/submit.conf` (SEMSPARK_SHIP=provisioned:
# submit-provisioned.conf) plus the embedded catalog flags of `semspark spark-conf`: the driver runs
# here, in client mode, with the Derby catalog of SEMSPARK_HOME. Other spark-submit options go
# before APP.py. On a real cluster, see README "Running on a cluster".
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
command=${1:-}
[ -n "$command" ] && shift
home=${SEMSPARK_HOME:-$root/var}
dir="$home/cluster"
port=7077
webui_port=8080
workers=2
cores=1
memory=3g
format=tar
gpus=0
while (($#)); do
    case "$1" in
        --dir) dir=${2:?}; shift 2 ;;
        --port) port=${2:?}; shift 2 ;;
        --webui-port) webui_port=${2:?}; shift 2 ;;
        --workers) workers=${2:?}; shift 2 ;;
        --cores) cores=${2:?}; shift 2 ;;
        --memory) memory=${2:?}; shift 2 ;;
        --format) format=${2:?}; shift 2 ;;
        --gpus-per-worker) gpus=${2:?}; shift 2 ;;
        *) break ;;
    esac
done
say() { printf '[cluster] %s\n' "$*" >&2; }
usage() { sed -n '2,26p' "$0" >&2; exit 2; }

[ -x "$venv/bin/python" ] || { say "no $venv: run deploy/bootstrap.sh (make env) first"; exit 1; }
export SPARK_HOME="$venv/lib/python3.11/site-packages/pyspark"
export PATH="$venv/bin:$PATH"
# Every daemon, executor and the driver bind to loopback only.
export SPARK_LOCAL_IP=127.0.0.1
export SPARK_PID_DIR="$dir/pids" SPARK_LOG_DIR="$dir/logs" SPARK_IDENT_STRING=semspark
master_class=org.apache.spark.deploy.master.Master
worker_class=org.apache.spark.deploy.worker.Worker

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
master_pid_file() { echo "$SPARK_PID_DIR/spark-semspark-$master_class-1.pid"; }
worker_pid_file() { echo "$SPARK_PID_DIR/spark-semspark-$worker_class-$1.pid"; }

wait_for_port() {  # the master accepts connections on its port
    local deadline=$((SECONDS + 60))
    until (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; do
        ((SECONDS < deadline)) || { say "nothing listens on 127.0.0.1:$1 after 60 s; see $SPARK_LOG_DIR"; return 1; }
        sleep 0.5
    done
}

# What a shipped application costs on this machine's disk (bench/cluster_bench.py's
# shipped_peak_disk_gb: 15.4 GB at the peak with the 1.9 GB archive): the driver copies the archive
# twice into its scratch and unpacks it; each worker fetches it into its cache, and its executor
# copies and unpacks it; env/ holds one more unpacked copy. Unpacked, the environment is what env/
# holds, or before that at most what .venv holds (a tar.gz is far smaller than what it unpacks to).
# Short of that, executors die at start with "No space left on device" and Spark launches new
# ones in a loop, so a first start refuses and says what to do; a restart of a running cluster
# (a worker coming back) only warns, its applications' folders already being on the disk.
check_disk() {  # ARCHIVE UNPACK_ENV(0|1)
    local size unpacked free need message env_copy=""
    size=$(stat -c %s "$1")
    if (($2)); then unpacked=$(du -sb "$venv" | cut -f1); else unpacked=$(du -sb "$dir/env" | cut -f1); fi
    need=$(((workers + 1) * (2 * size + unpacked) + $2 * unpacked))
    free=$(df -P -B1 "$dir" | awk 'NR == 2 {print $4}')
    ((free >= need)) && return 0
    # (not `$( (($2)) && echo ...)` inside the assignment: under set -e its failure when env/ is
    # already unpacked ended the script there, silently)
    if (($2)); then env_copy=", one more unpacked copy in env/"; fi
    local workers_named="$workers workers"
    if ((workers == 1)); then workers_named="1 worker"; fi
    message="$dir has $((free / 1024 ** 3)) GB free; a shipped application on $workers_named needs about $((need / 1024 ** 3)) GB (the $((size / 1024 ** 2)) MB archive, $((unpacked / 1024 ** 2)) MB unpacked: two copies and an unpacked copy for the driver and for each worker$env_copy). Free space there, start with --dir on a larger disk, or with fewer --workers"
    if alive "$(master_pid_file)"; then
        say "warning: $message"
    else
        say "$message"
        exit 1
    fi
}

write_configs() {
    mkdir -p "$dir" "$SPARK_PID_DIR" "$SPARK_LOG_DIR" "$dir/work" "$dir/local/driver" "$dir/local/executors"
    # Files holding the secret are created owner-only before anything is written into them.
    (umask 077 && touch "$dir/secret" "$dir/daemon.conf" "$dir/submit.conf" "$dir/submit-provisioned.conf")
    if [ ! -s "$dir/secret" ]; then
        "$venv/bin/python" -c "import secrets; print(secrets.token_hex(32))" > "$dir/secret"
    fi
    local secret archive
    secret=$(cat "$dir/secret")
    archive=$(bash "$root/deploy/package.sh" --format "$format")
    cat > "$dir/cluster.env" <<EOF
MASTER_URL=spark://127.0.0.1:$port
MASTER_PORT=$port
WEBUI_URL=http://127.0.0.1:$webui_port
WORKERS=$workers
WORKER_CORES=$cores
ENV_ARCHIVE=$archive
EOF
    cat > "$dir/daemon.conf" <<EOF
spark.authenticate                 true
spark.authenticate.secret          $secret
spark.network.crypto.enabled       true
# Workers delete the folders of finished applications (each holds an unpacked environment).
spark.worker.cleanup.enabled       true
spark.worker.cleanup.interval      600
spark.worker.cleanup.appDataTtl    3600
EOF
    if ((gpus > 0)); then  # each worker offers its GPUs; applications ask with conf/spark-gpu.conf
        cat >> "$dir/daemon.conf" <<EOF
spark.worker.resource.gpu.amount          $gpus
spark.worker.resource.gpu.discoveryScript $root/conf/gpu-discovery.sh
EOF
    fi
    cat > "$dir/submit.conf" <<EOF
spark.master                       spark://127.0.0.1:$port
spark.authenticate                 true
spark.authenticate.secret          $secret
spark.network.crypto.enabled       true
spark.driver.host                  127.0.0.1
spark.driver.bindAddress           127.0.0.1
spark.local.dir                    $dir/local/driver
spark.executor.cores               $cores
spark.executor.memory              2g
spark.pyspark.driver.python        $venv/bin/python
spark.executorEnv.OMP_THREAD_LIMIT 1
spark.executorEnv.TF_CPP_MIN_LOG_LEVEL 2
spark.executorEnv.PYTHONWARNINGS   ignore::FutureWarning
# Executors' own scratch under DIR too, not /tmp: each copies a shipped archive there before it
# unpacks it, and an executor killed meanwhile would leave 2 GB in /tmp.
spark.executor.extraJavaOptions    -Djava.io.tmpdir=$dir/local/executors
EOF
    # Shipped: every application carries the environment; each executor unpacks it as ./environment.
    cp "$dir/submit.conf" "$dir/submit-provisioned.conf"
    cat >> "$dir/submit.conf" <<EOF
spark.archives                     $archive#environment
spark.files                        $root/deploy/executor-python.sh
spark.pyspark.python               ./executor-python.sh
EOF
    # Provisioned: the same archive unpacked once per node at one path (what the GPU image of
    # deploy/docker does); applications then start in seconds instead of moving 2 GB each.
    local stamp="$dir/env/.archive-inputs" unpack=1
    [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$(cat "$archive.inputs.sha256")" ] && unpack=0
    check_disk "$archive" "$unpack"
    if ((unpack)); then
        say "unpacking the environment once for provisioned submits into $dir/env"
        rm -rf "$dir/env"
        mkdir -p "$dir/env"
        tar -xf "$archive" -C "$dir/env"
        cp "$archive.inputs.sha256" "$stamp"
    fi
    cat >> "$dir/submit-provisioned.conf" <<EOF
spark.pyspark.python               $dir/env/bin/python
EOF
}

start() {
    if alive "$(master_pid_file)" && [ -f "$dir/cluster.env" ] \
       && [ "$(sed -n 's/^MASTER_PORT=//p' "$dir/cluster.env")" != "$port" ]; then
        say "a master from $dir already runs on port $(sed -n 's/^MASTER_PORT=//p' "$dir/cluster.env"), not $port: stop it first"
        exit 1
    fi
    write_configs
    if alive "$(master_pid_file)"; then
        say "master already running (pid $(cat "$(master_pid_file)"))"
    else
        "$SPARK_HOME/sbin/spark-daemon.sh" start "$master_class" 1 --host 127.0.0.1 --port "$port" \
            --webui-port "$webui_port" --properties-file "$dir/daemon.conf" >&2
    fi
    wait_for_port "$port"
    local i
    for ((i = 1; i <= workers; i++)); do
        if alive "$(worker_pid_file "$i")"; then
            continue
        fi
        mkdir -p "$dir/work/worker-$i" "$dir/local/worker-$i"
        # Scratch (fetched files, shuffle) under DIR too, not /tmp: an executor killed with its worker
        # leaves its 2 GB fetch of the environment behind, and `stop` + removing DIR clears it.
        SPARK_LOCAL_DIRS="$dir/local/worker-$i" \
        "$SPARK_HOME/sbin/spark-daemon.sh" start "$worker_class" "$i" --host 127.0.0.1 \
            --cores "$cores" --memory "$memory" --work-dir "$dir/work/worker-$i" \
            --webui-port "$((webui_port + i))" --properties-file "$dir/daemon.conf" \
            "spark://127.0.0.1:$port" >&2
    done
    wait_for_workers
    say "up: spark://127.0.0.1:$port with $workers workers x $cores cores (UI $((webui_port)) on 127.0.0.1)"
}

wait_for_workers() {  # the master's JSON view lists every worker ALIVE
    local deadline=$((SECONDS + 90)) alive_count=0
    while ((SECONDS < deadline)); do
        alive_count=$("$venv/bin/python" - "http://127.0.0.1:$webui_port/json/" <<'EOF' 2>/dev/null || echo 0
import json, sys, urllib.request
state = json.load(urllib.request.urlopen(sys.argv[1], timeout=5))
print(sum(w["state"] == "ALIVE" for w in state["workers"]))
EOF
)
        ((alive_count >= workers)) && return 0
        sleep 1
    done
    say "only $alive_count of $workers workers registered after 90 s; see $SPARK_LOG_DIR"
    return 1
}

stop() {
    local pid_file pid
    # Workers first (each stops its executors), then the master.
    for pid_file in "$SPARK_PID_DIR"/spark-semspark-"$worker_class"-*.pid "$(master_pid_file)"; do
        [ -f "$pid_file" ] || continue
        pid=$(cat "$pid_file")
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid"
            for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -0 "$pid" 2>/dev/null && { say "pid $pid ignored SIGTERM for 10 s; killing it"; kill -9 "$pid"; }
        fi
        rm -f "$pid_file"
    done
    say "stopped"
}

status() {
    local pid_file running=0
    for pid_file in "$(master_pid_file)" "$SPARK_PID_DIR"/spark-semspark-"$worker_class"-*.pid; do
        [ -f "$pid_file" ] || continue
        if alive "$pid_file"; then
            echo "running  $(basename "$pid_file" .pid | sed 's/spark-semspark-org.apache.spark.deploy.//')  pid $(cat "$pid_file")"
            running=1
        else
            echo "dead     $(basename "$pid_file" .pid | sed 's/spark-semspark-org.apache.spark.deploy.//')"
        fi
    done
    [ -f "$dir/cluster.env" ] && cat "$dir/cluster.env"
    ((running))
}

submit() {
    [ -f "$dir/submit.conf" ] || { say "no cluster configured in $dir: deploy/cluster.sh start first"; exit 1; }
    (($#)) || usage
    local catalog
    export SEMSPARK_HOME="$home"
    read -r -a catalog <<< "$("$venv/bin/semspark" spark-conf)"
    # The driver JVM (client mode) copies --archives into java.io.tmpdir first: keep that under DIR
    # as well, or a killed driver leaves 2 GB in /tmp.
    export SPARK_SUBMIT_OPTS="-Djava.io.tmpdir=$dir/local/driver ${SPARK_SUBMIT_OPTS:-}"
    local conf="$dir/submit.conf"
    [ "${SEMSPARK_SHIP:-archive}" = provisioned ] && conf="$dir/submit-provisioned.conf"
    exec "$SPARK_HOME/bin/spark-submit" --properties-file "$conf" "${catalog[@]}" \
        --conf "spark.executorEnv.SEMSPARK_HOME=$home" "$@"
}

case "$command" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    submit) submit "$@" ;;
    *) usage ;;
esac
