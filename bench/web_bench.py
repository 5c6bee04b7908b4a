"""Benchmark of the web app on a catalog of 150,000 generated rows. Prints one JSON document.

    .venv/bin/python bench/web_bench.py [--rows 150000] [--rounds 30] [--no-sql]

A scratch SEMSPARK_HOME gets tables written the way Spark lays them out (sem.images partitioned by
scale bin, sem.predictions of one production model with 256-d embeddings, sem.labels for a third
of the images, sem.promotions, sem.models) and a dataset holding a small stored PNG per image.
``semspark web`` runs in this process (waitress on a free loopback port, a logged-in client);
timed over HTTP, each --rounds times after a first view that makes the thumbnails:
- gallery: the HTML page of 100 images for a mix of filters and sorts, and the same page with its
  100 thumbnails fetched by 6 connections at once (a browser's way);
- api: /api/images for the same searches;
- image page: one image's page.
Baseline, measured in the same run: the same page's rows read with ``semspark sql`` (a new process,
as a user runs it: the tables registered in the embedded catalog first). Target (issue 14): p95
under 300 ms for a page of 100 thumbnails.
"""
from __future__ import annotations

import argparse
import hashlib
import http.cookiejar
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest_bench import cpu_model  # noqa: E402
from scale_bench import free_port  # noqa: E402

BINS = ["100nm", "200nm", "500nm", "1um", "2um", "5um", "10um", "20um", "50um", "100um"]
CATEGORIES = ["Biological", "Fibres", "Films_Coated_Surface", "MEMS_devices_and_electrodes", "Nanowires",
              "Particles", "Patterned_surface", "Porous_Sponge", "Powder", "Tips"]
SEARCHES = ["", "sort=confidence", "category=Nanowires", "label=Fibres&min_confidence=0.5",
            "scale_bin=1um&scale_bin=2um", "min_nm_per_px=2&max_nm_per_px=8&sort=-scale",
            "path=2026-03", "disagrees=true", "ingested_from=2026-02-01&ingested_to=2026-04-30&sort=oldest",
            "page=40", "uncertain=true&sort=path"]
PASSWORD = "bench-password"


def embeddings_of(categories, dims: int, rng):
    """Embeddings shaped like a CNN's: ReLU of a few tens of latent dimensions (a centre per
    category plus each image's own variation) spread over ``dims`` features: the paper measures
    intrinsic dimensions in the tens. Random normal vectors would have none of that structure."""
    import numpy as np

    latent = 24
    centres = rng.normal(size=(len(CATEGORIES), latent))
    spread = np.random.default_rng(12345).normal(size=(latent, dims)) / np.sqrt(latent)
    points = centres[categories] + 0.8 * rng.normal(size=(len(categories), latent))
    return np.maximum(points @ spread, 0).astype("float32")


def generate(home: Path, rows: int, seed: int = 0, embedding_dims: int = 256) -> None:
    """The catalog's tables and the dataset, as Spark and the ingest write them."""
    import cv2
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    root = home / "warehouse" / "sem.db"
    ids = [hashlib.sha256(f"bench-{i}".encode()).hexdigest() for i in range(rows)]
    start = np.datetime64("2025-12-01T02:00:00")
    nights = rng.integers(0, 365, rows)
    ingested = start + nights.astype("timedelta64[D]")
    bins = rng.integers(0, len(BINS), rows)
    nm = rng.lognormal(1.5, 1.0, rows)
    cat = rng.integers(0, len(CATEGORIES), rows)
    when = [str(ingested[i])[:10] for i in range(rows)]
    table = {
        "image_id": ids, "path": [f"file:/data/sem/{when[i]}/sample_{i:06d}.tif" for i in range(rows)],
        "format": ["tiff"] * rows, "width": [1024] * rows, "height": [768] * rows, "bit_depth": [8] * rows,
        "color": ["gray"] * rows, "scale_value": rng.choice([1.0, 2.0, 5.0, 500.0], rows), "scale_unit": ["um"] * rows,
        "scale_bar_px": rng.uniform(50, 300, rows), "nm_per_px": nm, "scale_source": rng.choice(["metadata", "ocr"], rows),
        "scale_confidence": rng.choice(["high", "medium", "low"], rows), "label": [None] * rows,
        "ingested_at": ingested.astype("datetime64[us]"), "ingest_run": [f"run-{n:03d}" for n in nights],
        "chroma": rng.uniform(0, 0.02, rows), "contrast": rng.uniform(0.1, 0.4, rows),
    }
    full = pa.table(table)
    for b, name in enumerate(BINS):
        folder = root / "images" / f"scale_bin={name}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(full.filter(pa.array(bins == b)), folder / "part-00000-bench.snappy.parquet",
                       use_deprecated_int96_timestamps=True)
    labelled = rng.random(rows) < 0.33
    label_of = np.where(rng.random(rows) < 0.85, cat, rng.integers(0, len(CATEGORIES), rows))
    (root / "labels").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "image_id": [ids[i] for i in np.flatnonzero(labelled)],
        "label": [CATEGORIES[label_of[i]] for i in np.flatnonzero(labelled)],
        "source": ["folders"] * int(labelled.sum()), "labelled_by": ["bench"] * int(labelled.sum()),
        "labelled_at": ingested[labelled].astype("datetime64[us]"), "label_run": ["bench"] * int(labelled.sum())}),
        root / "labels" / "part-00000-bench.snappy.parquet", use_deprecated_int96_timestamps=True)
    probabilities = rng.dirichlet(np.ones(len(CATEGORIES)) * 0.3, rows).astype("float32")
    probabilities[np.arange(rows), cat] += 1.0
    probabilities /= probabilities.sum(1, keepdims=True)
    confidence = probabilities.max(1)
    folder = root / "predictions" / "model_version=bench%2F1"
    folder.mkdir(parents=True, exist_ok=True)
    chunk = 25_000
    for k in range(0, rows, chunk):
        s = slice(k, min(rows, k + chunk))
        n = s.stop - s.start
        pq.write_table(pa.table({
            "image_id": ids[s], "category": [CATEGORIES[c] for c in probabilities[s].argmax(1)],
            "confidence": confidence[s].astype("float64"),
            "probabilities": pa.array(list(probabilities[s]), pa.list_(pa.float32())),
            "logits": pa.array(list(np.log(probabilities[s])), pa.list_(pa.float32())),
            "embedding": pa.array(list(embeddings_of(cat[s], embedding_dims, rng)), pa.list_(pa.float32())),
            "predicted_at": (ingested[s] + np.timedelta64(1, "h")).astype("datetime64[us]"),
            "infer_run": ["bench"] * n, "uncertain": confidence[s] < 0.6, "out_of_distribution": [False] * n,
            "ood_distance": rng.uniform(0, 1, n), "ood_reason": [None] * n}),
            folder / f"part-{k // chunk:05d}-bench.snappy.parquet", use_deprecated_int96_timestamps=True)
    (root / "promotions").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"model_version": ["bench/1"], "stage": ["production"],
                             "promoted_at": pa.array([np.datetime64("2026-11-01T00:00:00", "us")])}),
                   root / "promotions" / "part-00000-bench.snappy.parquet", use_deprecated_int96_timestamps=True)
    (root / "models").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"model_version": ["bench/1"], "name": ["bench"], "version": pa.array([1], pa.int32()),
                             "classes": [",".join(CATEGORIES)]}), root / "models" / "part-00000-bench.snappy.parquet")
    # the dataset: a small stored PNG per image (thumbnails are cut from these)
    tile = [cv2.imencode(".png", rng.integers(0, 255, (48, 48), dtype=np.uint8))[1].tobytes() for _ in range(64)]
    for b, name in enumerate(BINS):
        folder = home / "datasets" / "images" / f"scale_bin={name}"
        folder.mkdir(parents=True, exist_ok=True)
        chosen = np.flatnonzero(bins == b)
        pq.write_table(pa.table({"image_id": [ids[i] for i in chosen], "image": [tile[i % 64] for i in chosen]}),
                       folder / "part-00000-bench.parquet")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(seconds: list[float]) -> dict:
    return {"median_ms": round(1000 * statistics.median(seconds), 1), "p95_ms": round(1000 * percentile(seconds, 0.95), 1),
            "n": len(seconds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=150_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--no-sql", action="store_true", help="skip the semspark sql baseline")
    parser.add_argument("--embedding-dims", type=int, default=256,
                        help="embedding width (AlexNet 4096, Inception-v4 1536: projected to 256 for 'more like this')")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="semspark-web-bench-"))
    os.environ["SEMSPARK_HOME"] = str(home)
    if not args.no_sql:
        register_tables(home)   # before the files: Spark makes a managed table's folder itself
    started = time.perf_counter()
    generate(home, args.rows, embedding_dims=args.embedding_dims)
    generated_s = time.perf_counter() - started

    from waitress.server import create_server

    from semspark.config import Config, WebConfig
    from semspark.web.accounts import Accounts
    from semspark.web.app import create_app

    port = free_port()
    config = Config(web=WebConfig(port=port))
    Accounts(home / config.web.users_file).add_user("bench", PASSWORD)
    app = create_app(config, home)
    copying = time.perf_counter()   # what the first request after a start waits for
    app.extensions["semspark"]["tables"].refresh(force=True)
    copy_s = time.perf_counter() - copying
    server = create_server(app, host="127.0.0.1", port=port, threads=8)
    threading.Thread(target=server.run, daemon=True).start()
    base = f"http://127.0.0.1:{port}"
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    opener.open(base + "/login", urllib.parse.urlencode({"user": "bench", "password": PASSWORD}).encode()).read()
    cookie = "; ".join(f"{c.name}={c.value}" for c in jar)

    def fetch(path: str) -> bytes:
        request = urllib.request.Request(base + path, headers={"Cookie": cookie})
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.read()

    pool = ThreadPoolExecutor(6)
    first_view, html, with_thumbs, api, image_page = [], [], [], [], []
    for search in SEARCHES:                   # first views: thumbnails made
        t = time.perf_counter()
        page = fetch("/?" + search)
        first_view.append(time.perf_counter() - t)
        assert b'class="tile"' in page or b"0</span> images" in page, search
    import re
    for round_no in range(args.rounds):
        search = SEARCHES[round_no % len(SEARCHES)]
        t = time.perf_counter()
        page = fetch("/?" + search)
        html.append(time.perf_counter() - t)
        ids = re.findall(rb'data-image-id="([0-9a-f]{64})"', page)
        list(pool.map(lambda i: fetch(f"/thumbnails/{i.decode()}.png"), ids))
        with_thumbs.append(time.perf_counter() - t)
        t = time.perf_counter()
        fetch("/api/images?" + search)
        api.append(time.perf_counter() - t)
        if ids:
            t = time.perf_counter()
            fetch(f"/images/{ids[0].decode()}")
            image_page.append(time.perf_counter() - t)
    similar = more_like_this(fetch, [r.decode() for r in re.findall(rb'data-image-id="([0-9a-f]{64})"', fetch("/"))],
                             home, args.embedding_dims)
    server.close()

    report = {"benchmark": "web", "rows": args.rows, "machine": {"cpu": cpu_model(), "cores": os.cpu_count(),
                                                                  "python": platform.python_version()},
              "generate_s": round(generated_s, 1), "tables_copied_s": round(copy_s, 2),
              "gallery_first_view": summary(first_view), "gallery_html": summary(html),
              "gallery_with_100_thumbnails": summary(with_thumbs), "api_images": summary(api),
              "image_page": summary(image_page), "more_like_this": similar, "searches": SEARCHES}
    if not args.no_sql:
        report["semspark_sql_page"] = sql_baseline(home)
    report["target"] = {"gallery_with_100_thumbnails_p95_ms": 300,
                        "met": report["gallery_with_100_thumbnails"]["p95_ms"] <= 300}
    print(json.dumps(report, indent=2))
    shutil.rmtree(home, ignore_errors=True)


def more_like_this(fetch, ids: list[str], home: Path, dims: int) -> dict:
    """/api/images/<id>/similar: the first call (the index made from every embedding), then one per
    image; and recall at 12 against exact cosine over the full embeddings (numpy), which is 1 when
    the embeddings are not projected (256 wide or less)."""
    import glob

    import numpy as np
    import pyarrow.parquet as pq

    t = time.perf_counter()
    first = json.loads(fetch(f"/api/images/{ids[0]}/similar"))
    index_s = time.perf_counter() - t
    seconds, answers = [], {ids[0]: first}
    for image_id in ids[1:31]:
        t = time.perf_counter()
        answers[image_id] = json.loads(fetch(f"/api/images/{image_id}/similar"))
        seconds.append(time.perf_counter() - t)
    files = sorted(glob.glob(str(home / "warehouse" / "sem.db" / "predictions" / "model_version=bench%2F1" / "*.parquet")))
    every_id, rows = [], []
    for f in files:
        table = pq.read_table(f, columns=["image_id", "embedding"])
        every_id += table["image_id"].to_pylist()
        rows.append(np.stack(table["embedding"].to_numpy()).astype(np.float32))
    matrix = np.concatenate(rows)
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    position = {image_id: i for i, image_id in enumerate(every_id)}
    recalls = []
    for image_id, answer in answers.items():
        similarity = matrix @ matrix[position[image_id]]
        similarity[position[image_id]] = -np.inf
        exact = {every_id[i] for i in np.argpartition(-similarity, 11)[:12]}
        recalls.append(len(exact & {r["image_id"] for r in answer["images"]}) / 12)
    return {"embedding_dims": dims, "first_call_s": round(index_s, 2), **summary(seconds),
            "recall_at_12_vs_exact": round(float(np.mean(recalls)), 3)}


def _spark_script(home: Path, body: str) -> None:
    script = ("from semspark.config import Config; from semspark.session import build_session; "
              "from semspark.catalog import ensure_tables; from semspark.schema import IMAGES, LABELS, PREDICTIONS; "
              f"s = build_session(Config()); {body}; s.stop()")
    subprocess.run([sys.executable, "-c", script], env={**os.environ, "SEMSPARK_HOME": str(home)}, check=True,
                   capture_output=True)


def register_tables(home: Path) -> None:
    _spark_script(home, "s.sql('CREATE DATABASE IF NOT EXISTS sem'); ensure_tables(s, 'sem', (IMAGES, LABELS, PREDICTIONS))")


def sql_baseline(home: Path) -> dict:
    """The first gallery page's rows through `semspark sql` in a new process (the generated
    partitions made known to the catalog first)."""
    env = {**os.environ, "SEMSPARK_HOME": str(home)}
    semspark = [str(ROOT / ".venv" / "bin" / "semspark")]
    _spark_script(home, "[s.sql(f'MSCK REPAIR TABLE sem.{t}') for t in ('images', 'predictions')]")
    query = ("SELECT i.image_id, i.path, i.scale_bin, i.nm_per_px, p.category, p.confidence FROM sem.images i "
             "LEFT JOIN sem.predictions p ON p.image_id = i.image_id AND p.model_version = 'bench/1' "
             "ORDER BY i.ingested_at DESC, i.image_id LIMIT 100")
    seconds = []
    for _ in range(2):
        t = time.perf_counter()
        out = subprocess.run(semspark + ["sql", query, "--format", "csv"], env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - t)
        assert out.returncode == 0 and out.stdout.count("\n") >= 100, out.stderr[-2000:]
    return {"seconds": [round(s, 1) for s in seconds], "query": query}


if __name__ == "__main__":
    main()
