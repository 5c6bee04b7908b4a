#!/usr/bin/env bash
# Spark resource discovery for GPU executors (spark.executor.resource.gpu.discoveryScript).
# Prints the GPUs this executor may use, as Spark expects: {"name": "gpu", "addresses": ["0", "1"]}.
set -euo pipefail
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo '{"name": "gpu", "addresses": []}'
    exit 0
fi
ids=$(nvidia-smi --query-gpu=index --format=csv,noheader | sed -e 's/^[[:space:]]*//' -e 's/.*/"&"/' | paste -sd, -)
echo "{\"name\": \"gpu\", \"addresses\": [${ids}]}"
