#!/bin/sh
# The Python of executors: the environment Spark unpacked from --archives ...#environment next to
# this file (both land in the executor's working folder; Spark marks files shipped with --files
# executable). Spark's own unpacking of archives drops the executable bits and mis-points relative
# links, so the interpreter is made executable here and started by its real name.
here=$(cd "$(dirname "$0")" && pwd)
python="$here/environment/bin/python3.11"
if [ ! -f "$python" ]; then
    echo "semspark: no environment next to $0; submit with --archives semspark-env-VERSION.tar#environment (deploy/package.sh)" >&2
    exit 127
fi
[ -x "$python" ] || chmod u+x "$python"
exec "$python" "$@"
