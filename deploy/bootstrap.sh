#!/usr/bin/env bash
# Make this machine ready to run semspark, idempotently:
#   Debian packages: tesseract-ocr-eng (Tesseract's English model; the engine is the tesserocr wheel's),
#   Java 17 (Spark), cmake and g++ (Horovod build), postgresql and libpostgresql-jdbc-java (the
#   metastore for teams: deploy/metastore.sh, and the tests that start one), chromium and
#   chromium-driver (tests/test_web.py drives the web app in a real browser);
#   .venv with the locked stack of requirements.lock, Horovod built from source as ../shared/STACK.md shows;
#   semspark itself installed in .venv in editable mode.
# When everything is already there it only checks stamps and returns in a second or two.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv="$root/.venv"
python=${SEMSPARK_PYTHON:-python3.11}
lock="$root/requirements.lock"

say() { printf '[bootstrap] %s\n' "$*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
missing=()
ls /usr/share/tesseract-ocr/*/tessdata/eng.traineddata >/dev/null 2>&1 || missing+=(tesseract-ocr-eng)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v cmake >/dev/null 2>&1 || missing+=(cmake)
command -v g++ >/dev/null 2>&1 || missing+=(g++)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -f /usr/share/java/postgresql.jar ] || missing+=(libpostgresql-jdbc-java)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)          # the web app's browser test
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if ((${#missing[@]})); then
    sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    say "installing Debian packages: ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- the locked Python stack -------------------------------------------------------------------
stack_stamp="$venv/.semspark-stack.sha256"
stack_hash=$(sha256sum "$lock" | cut -d' ' -f1)
if [ ! -f "$stack_stamp" ] || [ "$(cat "$stack_stamp")" != "$stack_hash" ]; then
    command -v "$python" >/dev/null 2>&1 || { say "need $python (Python 3.11) on PATH, or set SEMSPARK_PYTHON"; exit 1; }
    [ -x "$venv/bin/python" ] || { say "creating $venv"; "$python" -m venv "$venv"; }
    # setuptools < 70: Horovod 0.28.1's setup.py still uses APIs later releases removed.
    "$venv/bin/pip" install -q --upgrade pip wheel 'setuptools<70'
    say "installing the locked stack (about a minute)"
    grep -v '^horovod==' "$lock" > "$venv/.lock-without-horovod.txt"
    "$venv/bin/pip" install -q -r "$venv/.lock-without-horovod.txt"
    horovod_pin=$(grep '^horovod==' "$lock")
    if ! "$venv/bin/pip" show horovod 2>/dev/null | grep -q "^Version: ${horovod_pin#horovod==}$"; then
        # Horovod compiles against the installed TensorFlow. The wheel is kept per machine under a key
        # of everything it was compiled against (Horovod's and TensorFlow's pins, the interpreter, the
        # CPU kind, the build flags), so another checkout of the same lock (CI's clean clone, a second
        # working copy) installs it in seconds instead of compiling again; pip's own cache is not used
        # because it keys a built wheel by Horovod's version only, not by the TensorFlow it linked.
        build_flags="HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 HOROVOD_WITHOUT_MPI=1"
        build_key=$({ echo "$horovod_pin"; grep -E '^tensorflow(-cpu)?==' "$lock";
                      "$venv/bin/python" -c 'import platform, sys; print(sys.version, platform.machine())';
                      echo "$build_flags"; } | sha256sum | cut -c1-16)
        wheels="${SEMSPARK_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/semspark/wheels}/horovod-$build_key"
        if ! ls "$wheels"/horovod-*.whl >/dev/null 2>&1; then
            say "building $horovod_pin from source with TensorFlow and Gloo (2 to 5 minutes; kept in $wheels)"
            mkdir -p "$(dirname "$wheels")"
            building=$(mktemp -d "$(dirname "$wheels")/.building.XXXXXX") && chmod 755 "$building"
            trap 'rm -rf "$building"' EXIT   # a failed build leaves nothing behind
            # CMAKE_POLICY_VERSION_MINIMUM: Horovod's bundled gloo asks for a CMake policy CMake 4 rejects.
            env CMAKE_POLICY_VERSION_MINIMUM=3.5 $build_flags \
                "$venv/bin/pip" wheel -q --no-deps --no-build-isolation --no-cache-dir -w "$building" "$horovod_pin"
            # renamed into place whole: a build cut short never looks like a cached wheel
            mv -T "$building" "$wheels" 2>/dev/null || rm -rf "$building"
        else
            say "installing $horovod_pin built earlier on this machine ($wheels)"
        fi
        wheel=$(ls "$wheels"/horovod-*.whl)
        "$venv/bin/pip" install -q --no-build-isolation "$wheel[spark]"
    fi
    "$venv/bin/python" -c "import tensorflow, horovod.tensorflow.keras, horovod.spark, petastorm, pyspark" 2>/dev/null \
        || { say "the stack does not import after install; see the pip output above"; exit 1; }
    echo "$stack_hash" > "$stack_stamp"
fi

# --- semspark itself (editable, so the checkout is what runs) ----------------------------------
project_stamp="$venv/.semspark-project.sha256"
project_hash=$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)
if [ ! -f "$project_stamp" ] || [ "$(cat "$project_stamp")" != "$project_hash" ] \
   || ! "$venv/bin/python" -c "import semspark" 2>/dev/null; then
    say "installing semspark into .venv"
    "$venv/bin/pip" install -q --no-deps --no-build-isolation -e "$root"
    echo "$project_hash" > "$project_stamp"
fi
