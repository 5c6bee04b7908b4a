"""Benchmark of a checkout's set-up (what `make test` and `make demo` do first). Prints one JSON document.

    .venv/bin/python bench/setup_bench.py [--keep DIR]

In a fresh clone of this checkout, with per-machine caches of its own (empty at the start, so the
machine's real caches are neither used nor touched):
- a fresh clone's `deploy/bootstrap.sh` in all (the venv, the locked stack from pip's cache, Horovod);
- baseline: bootstrap with Horovod uninstalled, the stack's stamp removed and the wheel cache
  emptied (it checks the stack and compiles Horovod), and `deploy/airflow/setup-venv.sh` with an
  empty Airflow cache (Airflow installed);
- kept: the same as a second checkout meets them: bootstrap with Horovod uninstalled and the stamp
  removed installs the wheel the pass before kept; with `.airflow-venv` removed, the set-up links
  the venv the first pass kept.
Both passes end with `import horovod.tensorflow.keras` (bootstrap's own check) and `airflow version`.
pip's cache is the machine's: the figures are for a machine that has downloaded the stack once.
About 7 minutes on 2 cores (6.5 on 2026-12-04). Machines here are noisy: compare the ratios, not absolute times.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(command: list[str], cwd: Path, env: dict) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="work in DIR and leave it (default: a temporary folder, removed)")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="semspark-setup-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        clone = work / "clone"
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        env = dict(os.environ, SEMSPARK_WHEEL_CACHE=str(work / "wheels"), SEMSPARK_AIRFLOW_CACHE=str(work / "airflow"))
        bootstrap = ["bash", "deploy/bootstrap.sh"]
        airflow = ["bash", "deploy/airflow/setup-venv.sh"]
        venv = clone / ".venv"

        def without_horovod() -> None:  # what bootstrap then does: check the stack, install Horovod
            subprocess.run([str(venv / "bin" / "pip"), "uninstall", "-q", "-y", "horovod"], check=True)
            (venv / ".semspark-stack.sha256").unlink()

        fresh_clone = timed(bootstrap, clone, env)
        first_airflow = timed(airflow, clone, env)
        without_horovod()
        shutil.rmtree(work / "wheels")
        first_bootstrap = timed(bootstrap, clone, env)       # compiles Horovod again: the baseline
        without_horovod()
        kept_bootstrap = timed(bootstrap, clone, env)        # installs the wheel the pass before kept
        (clone / ".airflow-venv").unlink()
        kept_airflow = timed(airflow, clone, env)

        # what each pass left works: the Horovod check bootstrap makes, Airflow's own version
        timed([str(venv / "bin" / "python"), "-c", "import horovod.tensorflow.keras as hvd; hvd.init()"], clone, env)
        timed([str(clone / ".airflow-venv" / "bin" / "airflow"), "version"], clone, env)
        print(json.dumps({
            "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
            "fresh_clone_bootstrap_s": round(fresh_clone, 1),
            "bootstrap_with_the_stack_installed_s": {"baseline_compiling_horovod": round(first_bootstrap, 1),
                            "kept_wheel": round(kept_bootstrap, 1),
                            "ratio": round(first_bootstrap / kept_bootstrap, 1)},
            "airflow_venv_s": {"baseline_installing": round(first_airflow, 1),
                               "kept_venv_linked": round(kept_airflow, 2),
                               "ratio": round(first_airflow / kept_airflow, 1)},
        }, indent=2))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
