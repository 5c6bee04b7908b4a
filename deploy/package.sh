#!/usr/bin/env bash
# Package semspark for spark-submit: a wheel of the project and the whole Python environment
# (the locked stack + that wheel) as one archive for --archives, so that executors run the
# shipped environment and never import the project from a checkout.
#
#   deploy/package.sh [--format tar.gz|tar] [--output DIR]
#
#   --format  tar.gz (default; for clusters whose executors fetch it over the network) or tar
#             (about 4x faster to build and to unpack; what the loopback cluster of deploy/cluster.sh uses)
#   --output  where the wheel and the archive go (default: dist/ in the checkout)
#
# Prints the archive's path on the last line. Rebuilds only when requirements.lock, pyproject.toml,
# this script or a file of semspark/ changed since the last build of that format (a stamp next to
# the archive).
#
# How: the checkout's .venv has semspark installed in editable mode, which venv-pack cannot ship
# (and which would point executors back at the checkout). So the environment is cloned with hard
# links (instant, no extra space), the editable install is replaced by the wheel in the clone, and
# venv-pack packs the clone. Executors start ./environment/bin/python (--archives ...#environment);
# it finds the system's python3.11, so workers need the same base Python (same image or OS).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
format=tar.gz
out="$root/dist"
while (($#)); do
    case "$1" in
        --format) format=${2:?}; shift 2 ;;
        --output) out=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "deploy/package.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
done
case "$format" in tar|tar.gz) ;; *) echo "deploy/package.sh: --format must be tar.gz or tar" >&2; exit 2 ;; esac
say() { printf '[package] %s\n' "$*" >&2; }

[ -x "$venv/bin/python" ] || { say "no $venv: run deploy/bootstrap.sh (make env) first"; exit 1; }
"$venv/bin/python" -c "import venv_pack" 2>/dev/null \
    || { say "venv-pack is missing from $venv: run deploy/bootstrap.sh (make env)"; exit 1; }
version=$("$venv/bin/python" -c "import tomllib; print(tomllib.load(open('$root/pyproject.toml','rb'))['project']['version'])")
mkdir -p "$out"
archive="$out/semspark-env-$version.$format"
stamp="$archive.inputs.sha256"

# Two builds at once would clobber each other's clone.
exec 8>"$out/.package.lock"
flock 8

inputs=$(cd "$root" && { sha256sum requirements.lock pyproject.toml deploy/package.sh;
                         find semspark -type f -name '*.py' -print0 | sort -z | xargs -0 sha256sum; } | sha256sum | cut -d' ' -f1)
if [ -f "$archive" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$inputs" ]; then
    say "up to date: $archive"
    echo "$archive"
    exit 0
fi

# The new archive is written beside the old one before it replaces it: about one environment's
# size must be free, or venv-pack dies half-way with "No space left on device".
if [ -f "$archive" ]; then need=$(stat -c %s "$archive"); else need=$(du -sb "$venv" | cut -f1); fi
free=$(df -P -B1 "$out" | awk 'NR == 2 {print $4}')
if ((free < need + need / 10)); then
    say "$out has $((free / 1024 ** 2)) MB free; the archive needs about $((need / 1024 ** 2)) MB: free space there or pass --output on a larger disk"
    exit 1
fi

# The clone is made of hard links to .venv, so it lives beside .venv (on its filesystem), not in
# --output, which may be another disk; the archive is written into --output under a temporary
# name and renamed into place, so a reader never sees half an archive.
work=$(mktemp -d "$root/.package-build.XXXXXX")
partial="$out/.semspark-env-$version.$format.partial"
trap 'rm -rf "$work" "$partial"' EXIT

# The wheel, built from a copy of the sources: an in-tree build/ could carry deleted modules along.
say "building the semspark $version wheel"
mkdir "$work/src"
cp -r "$root/pyproject.toml" "$root/README.md" "$root/semspark" "$work/src/"
find "$work/src" -name __pycache__ -type d -prune -exec rm -rf {} +
"$venv/bin/pip" wheel -q --no-deps --no-build-isolation -w "$work/wheel" "$work/src" >&2
wheel=$(ls "$work"/wheel/semspark-*.whl)
cp "$wheel" "$out/"

say "cloning the environment (hard links) and installing the wheel into the clone"
cp -al "$venv" "$work/env"
# Spark unpacks archives with a checker that refuses links pointing outside the archive, and the
# venv's python is an absolute link to the base interpreter: ship a copy of it, as `venv --copies`
# does (it still finds its standard library through pyvenv.cfg's home).
for link in $(find "$work/env" -type l -lname '/*'); do
    target=$(readlink -f "$link")
    rm "$link"
    cp "$target" "$link"
done
# The clone's own interpreter (bin/python is a symlink; pyvenv.cfg makes the clone its prefix).
"$work/env/bin/python" -m pip uninstall -q -y semspark >&2
"$work/env/bin/python" -m pip install -q --no-deps --no-index "$wheel" >&2
(cd / && "$work/env/bin/python" - "$work/env") <<'EOF' >&2
import pathlib, sys
import semspark
where = pathlib.Path(semspark.__file__).resolve()
if pathlib.Path(sys.argv[1]).resolve() not in where.parents:
    sys.exit(f"[package] semspark in the clone resolves to {where}, not the wheel: refusing to pack")
EOF

say "packing with venv-pack ($format; a tar.gz takes about half a minute)"
level=(); [ "$format" = tar.gz ] && level=(--compress-level 1)
# TensorFlow's C++ headers are for building extensions, which is done: 170 MB less to ship.
# pyspark's jars are the JVM of a Spark started from Python; executors and a submitted driver run
# in the cluster's own Spark and import pyspark from its python/lib/pyspark.zip: 320 MB less.
"$venv/bin/venv-pack" -q -f -p "$work/env" -o "$partial" --format "$format" "${level[@]}" \
    --exclude 'lib/python3.11/site-packages/tensorflow/include/*' \
    --exclude 'lib/python3.11/site-packages/pyspark/jars/*'
# venv-pack writes it owner-only; it holds no secret, and a node provisioned from it (unpacked at
# one path, e.g. by another user) must be able to read it.
chmod 0644 "$partial"
mv -f "$partial" "$archive"
echo "$inputs" > "$stamp"
say "packed $(du -h "$archive" | cut -f1) into $archive"
echo "$archive"
