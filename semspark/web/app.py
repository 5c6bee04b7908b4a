"""`semspark web`: the lab's gallery over the catalog, image pages, and corrections, on a JSON API.

Flask for the routes and templates (Jinja escapes every value), waitress to serve (a production
WSGI server in pure Python, threads, no extra process). Pages and scripts use the same API under
/api/ (a logged-in browser with its cookie, a script with ``Authorization: Bearer TOKEN``).

Security: loopback unless told otherwise; every page and call needs a user (a login with a
password from the users file, a token, or the single-sign-on header when configured); a write
from a browser must carry the session's CSRF token (a form field or ``X-CSRF-Token``), so another
site cannot make a logged-in browser write; images are named by id only; responses forbid framing
and foreign scripts.
"""
from __future__ import annotations

import csv
import datetime
import io
import logging
import secrets
from pathlib import Path

from semspark.config import Config, semspark_home
from semspark.web.accounts import Accounts, LoginThrottle
from semspark.web.pictures import Pictures, valid_image_id
from semspark.web.hierarchies import Hierarchies
from semspark.web.neighbours import Neighbours, NeighboursError
from semspark.web.readings import ScaleReadings
from semspark.web.charts import line_chart
from semspark.web.search import (DERIVED, LEFT_ON_DISK, QUEUES, SORTS, TABLES, FilterError, Filters, accuracy_per_epoch,
                                 analyses, analysis_of, choices, clusters, described, image, known_labels, models,
                                 production_model, review_queue, runs, search)
from semspark.web.tables import Tables, Warehouse
from semspark.web.writes import CatalogBusy, CorrectionError, correct_label, correct_scale, name_cluster

log = logging.getLogger(__name__)

EXPORT_LIMIT = 200_000
MODELS_SHOWN = 6       # the models page draws the newest this many unless told which
FORM_WRITES = ("POST", "PUT", "DELETE", "PATCH")


def _secret_key(home: Path) -> bytes:
    """The key that signs session cookies: made once, readable by its owner only."""
    import os

    path = home / "web" / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(secrets.token_bytes(32))
    return path.read_bytes()


def _json_ready(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, float) and value != value:   # NaN is not JSON
        return None
    return value


def create_app(config: Config, home: Path | None = None):
    from flask import Flask, abort, g, jsonify, redirect, render_template, request, session, url_for
    from werkzeug.exceptions import HTTPException

    from semspark.dataset import dataset_root, dataset_url

    home = home or semspark_home()
    web = config.web
    app = Flask(__name__)
    app.config.update(SECRET_KEY=_secret_key(home), SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax",
                      SESSION_COOKIE_SECURE=web.secure_cookies,
                      PERMANENT_SESSION_LIFETIME=datetime.timedelta(hours=12), MAX_CONTENT_LENGTH=64 * 1024)
    tables = Tables(Warehouse.of(home, config.catalog.database), TABLES, LEFT_ON_DISK, DERIVED)
    pictures = Pictures(dataset_root(dataset_url(config)), home / "web" / "thumbnails", web.thumbnail_px)
    accounts = Accounts(home / web.users_file)
    throttle = LoginThrottle()
    readings = ScaleReadings(config.ingest, home / "web" / "scale_readings")
    neighbours = Neighbours(tables.warehouse, home / "web" / "neighbours")
    cut_of = Hierarchies(home / "reports").cut     # an analysis's clusters at a k sem.clusters does not keep
    app.extensions["semspark"] = {"tables": tables, "pictures": pictures, "accounts": accounts, "readings": readings,
                                  "neighbours": neighbours}
    options_kept: dict[tuple, dict] = {}

    def is_api() -> bool:
        return request.path.startswith("/api/")

    @app.before_request
    def identify():
        g.user, g.by_token = None, False
        if request.endpoint in ("login", "static"):
            return None
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            g.user, g.by_token = accounts.user_of_token(header[len("Bearer "):].strip()), True
            if g.user is None:
                return jsonify(error="the token is not valid: make one with semspark web-user token NAME"), 401
        elif web.sso_header and request.headers.get(web.sso_header):
            g.user = request.headers[web.sso_header]
        else:
            g.user = session.get("user")
        if g.user is None:
            if is_api():
                return jsonify(error="log in first, or send Authorization: Bearer TOKEN"), 401
            return redirect(url_for("login", next=request.full_path if request.query_string else request.path))
        if request.method in FORM_WRITES and not g.by_token:
            given = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
            if not session.get("csrf") or not secrets.compare_digest(given, session["csrf"]):
                message = "this request did not come from a semspark page (no valid CSRF token): reload and try again"
                return (jsonify(error=message), 403) if is_api() else (render_template("error.html", message=message), 403)
        return None

    @app.after_request
    def harden(response):
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "same-origin"
        response.headers["Content-Security-Policy"] = ("default-src 'self'; img-src 'self' data:; "
                                                       "style-src 'self'; script-src 'self'; frame-ancestors 'none'")
        return response

    @app.context_processor
    def common():
        if "csrf" not in session and getattr(g, "user", None) and not getattr(g, "by_token", False):
            session["csrf"] = secrets.token_urlsafe(24)
        return {"user": getattr(g, "user", None), "csrf": session.get("csrf", ""), "sso": bool(web.sso_header)}

    @app.errorhandler(FilterError)
    @app.errorhandler(CorrectionError)
    def bad_request(exc):
        return (jsonify(error=str(exc)), 400) if is_api() else (render_template("error.html", message=str(exc)), 400)

    @app.errorhandler(CatalogBusy)
    def catalog_busy(exc):
        log.warning("web: %s", exc)
        page = jsonify(error=str(exc)) if is_api() else render_template("error.html", message=str(exc))
        return page, 503, {"Retry-After": "60"}

    @app.errorhandler(HTTPException)
    def http_error(exc):
        if is_api():
            return jsonify(error=exc.description), exc.code
        return render_template("error.html", message=exc.description), exc.code

    # --- login ------------------------------------------------------------------------------
    @app.route("/login", methods=["GET", "POST"])
    def login():
        target = request.values.get("next") or "/"
        if not target.startswith("/") or target.startswith("//"):
            target = "/"    # only back into this app
        if request.method == "POST":
            name, password = request.form.get("user", ""), request.form.get("password", "")
            address = request.remote_addr or "?"
            wait = throttle.wait_s(name, address)
            if wait > 0:
                log.warning("web: login of %r from %s refused: too many failed logins", name, address)
                return render_template("login.html", next=target, error=(
                    f"too many failed logins for this user or from this address: try again in "
                    f"{max(1, round(wait / 60))} minute(s), or ask the operator (semspark web-user)")), 429
            if accounts.check_password(name, password):
                throttle.succeeded(name)
                session.clear()
                session.permanent = True
                session["user"], session["csrf"] = name, secrets.token_urlsafe(24)
                log.info("web: %s logged in", name)
                return redirect(target)
            throttle.failed(name, address)
            return render_template("login.html", next=target, error="unknown user or wrong password"), 401
        if not accounts.names() and not web.sso_header:
            return render_template("login.html", next=target,
                                   error=f"no accounts yet: run semspark web-user add NAME ({accounts.path})")
        return render_template("login.html", next=target, error=None)

    @app.route("/logout", methods=["POST"])
    def logout():
        session.clear()
        return redirect(url_for("login"))

    # --- pages ------------------------------------------------------------------------------
    @app.route("/")
    def gallery():
        filters = Filters.from_args(request.args, web.page_size)
        found = search(tables, filters, cut_of)
        pictures.thumbnails({row["image_id"]: row["scale_bin"] for row in found["images"]})   # one read a page
        pages = max(1, -(-found["total"] // filters.per_page))
        key = (tables.generation, found["model"])   # the filter fields' choices change only with the tables
        if key not in options_kept:
            options_kept.clear()
            options_kept[key] = choices(tables, found["model"])
        return render_template("gallery.html", found=found, filters=filters, pages=pages,
                               options=options_kept[key], sorts=list(SORTS))

    @app.route("/images/<image_id>")
    def image_page(image_id):
        row = _image_or_404(image_id)
        queue = request.args.get("queue")
        review = None
        if queue:
            if queue not in QUEUES:
                raise FilterError(f"queue: {queue!r} is none of {', '.join(QUEUES)}")
            left = review_queue(tables, queue)
            review = {"queue": queue, "title": QUEUES[queue], "left": len(left),
                      "next": url_for("review", queue=queue, after=image_id)}
        return render_template("image.html", image=row, labels=known_labels(tables), review=review)

    @app.route("/review/<queue>")
    def review(queue):
        """The next image of a review queue (after ``after``, in the queue's order): its page."""
        if queue not in QUEUES:
            abort(404, f"no review queue {queue!r}: the queues are {', '.join(QUEUES)}")
        ids = review_queue(tables, queue)
        after = request.args.get("after")
        position = ids.index(after) + 1 if after in ids else 0
        if position >= len(ids):
            return render_template("error.html", message=f"nothing left to review in \"{QUEUES[queue]}\""), 200
        return redirect(url_for("image_page", image_id=ids[position], queue=queue))

    def _back(default_url: str):
        """After a form: the page it names in ``next`` (only a path of this app), else ``default_url``."""
        target = request.form.get("next") or ""
        return redirect(target if target.startswith("/") and not target.startswith("//") else default_url)

    @app.route("/images/<image_id>/label", methods=["POST"])
    def label_form(image_id):
        _image_or_404(image_id)
        label = request.form.get("accept") or request.form.get("other") or request.form.get("label")
        result = correct_label(tables, image_id, label, g.user, wait_s=web.write_wait_s)
        log.info("web: %s labelled %s %r (%s)", g.user, image_id[:12], result["label"],
                 "changed" if result["changed"] else "confirmed" if result["recorded"] else "unchanged")
        return _back(url_for("image_page", image_id=image_id))

    @app.route("/images/<image_id>/scale", methods=["POST"])
    def scale_form(image_id):
        _image_or_404(image_id)
        result = correct_scale(tables, image_id, request.form.get("value"), request.form.get("unit"),
                               request.form.get("bar_px"), g.user, wait_s=web.write_wait_s)
        log.info("web: %s corrected the scale of %s to %g %s", g.user, image_id[:12], result["scale_value"],
                 result["scale_unit"])
        return _back(url_for("image_page", image_id=image_id))

    @app.route("/thumbnails/<image_id>.png")
    def thumbnail(image_id):
        if not valid_image_id(image_id):
            abort(404, "no such image")
        png = pictures.cached(image_id)
        if png is None:
            row = tables.query("SELECT scale_bin FROM images WHERE image_id = ?", [image_id])
            if not row:
                abort(404, "no such image")
            png = pictures.thumbnails({image_id: row[0]["scale_bin"]}).get(image_id)
            if png is None:
                abort(404, "the image has no stored pixels in the dataset")
        return _png(png, cache_seconds=86400)

    @app.route("/pixels/<image_id>.png")
    def pixels(image_id):
        if not valid_image_id(image_id):
            abort(404, "no such image")
        row = tables.query("SELECT scale_bin FROM images WHERE image_id = ?", [image_id])
        png = pictures.stored({image_id: row[0]["scale_bin"]}).get(image_id) if row else None
        if png is None:
            abort(404, "no stored pixels for this image")
        return _png(png, cache_seconds=3600)

    @app.route("/scale-readings/<image_id>.png")
    def scale_reading_picture(image_id):
        """The image's databar with the reading drawn on it (made from its original file if needed)."""
        row = _image_or_404(image_id)
        found = readings.reading(image_id, row["files"])
        png = readings.picture(image_id)
        if png is None:
            abort(404, found.get("reason") or "no picture of the reading")
        return _png(png, cache_seconds=3600)

    @app.route("/api/images/<image_id>/scale-reading")
    def api_scale_reading(image_id):
        row = _image_or_404(image_id)
        found = dict(readings.reading(image_id, row["files"]))
        if found["ok"]:
            found["picture"] = url_for("scale_reading_picture", image_id=image_id)
        return jsonify(_json_ready(found))

    @app.route("/api/images/<image_id>/similar")
    def api_similar(image_id):
        """"More like this": the images nearest by the model's embedding (?model=, default the
        production model; ?k= from 1 to 100, default 12)."""
        if not valid_image_id(image_id):
            abort(404, f"no image {image_id!r}: an image id is 64 hexadecimal digits (its SHA-256)")
        model = request.args.get("model") or production_model(tables)
        try:
            k = int(request.args.get("k", 12))
        except ValueError:
            k = 0
        if not 1 <= k <= 100:
            raise FilterError("k: a whole number from 1 to 100")
        if model is None:
            abort(404, "no production model to compare by: name one with ?model=NAME/N")
        try:
            nearest = neighbours.nearest(model, image_id, k)
        except NeighboursError as exc:
            abort(404, str(exc))
        about = described(tables, model, [i for i, _ in nearest])
        pictures.thumbnails({i: about[i]["scale_bin"] for i, _ in nearest if i in about})
        images = [{**about.get(i, {"image_id": i}), "similarity": round(s, 4),
                   "thumbnail": url_for("thumbnail", image_id=i), "page": url_for("image_page", image_id=i)}
                  for i, s in nearest]
        return jsonify(_json_ready({"model": model, "image_id": image_id, "images": images}))

    @app.route("/export.csv")
    def export():
        filters = Filters.from_args(request.args, web.page_size)
        filters.page, filters.per_page = 1, EXPORT_LIMIT
        found = search(tables, filters, cut_of)
        out = io.StringIO()
        writer = csv.writer(out)
        columns = list(found["images"][0]) if found["images"] else []
        writer.writerow(columns)
        for row in found["images"]:
            writer.writerow([_json_ready(row[c]) for c in columns])
        return app.response_class(out.getvalue(), mimetype="text/csv",
                                  headers={"Content-Disposition": "attachment; filename=semspark-images.csv"})

    def _cut(analysis: str) -> tuple[dict, dict]:
        """(the analysis, the cut a clusters request names: ?method=&k=&page=), by default the
        report's gallery cut when the analysis kept it, else its first."""
        try:
            about = analysis_of(tables, analysis)
        except FilterError as exc:
            abort(404, str(exc))
        cuts = about["cuts"]
        default = ({"method": config.analysis.gallery_method, "k": config.analysis.gallery_k}
                   if {"method": config.analysis.gallery_method, "k": config.analysis.gallery_k} in cuts
                   else cuts[0] if cuts else {"method": None, "k": None})
        try:
            k = int(request.args["k"]) if request.args.get("k") else default["k"]
            page = int(request.args.get("page") or 1)
        except ValueError as exc:
            raise FilterError("k and page are whole numbers") from exc
        if page < 1:
            raise FilterError("page: from 1")
        method = request.args.get("method") or default["method"]
        if method is None or k is None:
            raise FilterError(f"{analysis} kept no clusters in sem.clusters: choose method= and k=")
        return about, clusters(tables, analysis, method, k, page, cut_of=cut_of, about=about)

    @app.route("/clusters")
    def analyses_page():
        return render_template("analyses.html", analyses=analyses(tables))

    @app.route("/clusters/<analysis>")
    def clusters_page(analysis):
        about, cut = _cut(analysis)
        pictures.thumbnails({s["image_id"]: s["scale_bin"] for c in cut["clusters"] for s in c["samples"]})
        pages = max(1, -(-cut["clusters_obtained"] // cut["per_page"]))
        return render_template("clusters.html", cut=cut, about=about, pages=pages)

    @app.route("/clusters/<analysis>/name", methods=["POST"])
    def cluster_name_form(analysis):
        form = request.form
        try:
            k, cluster = int(form.get("k", "")), int(form.get("cluster", ""))
        except ValueError as exc:
            raise CorrectionError("k and cluster are whole numbers") from exc
        result = name_cluster(tables, analysis, form.get("method", ""), k, cluster, form.get("name"), g.user, cut_of,
                              wait_s=web.write_wait_s)
        log.info("web: %s named cluster %d of %s (%s, k=%d) %r", g.user, cluster, analysis, result["method"], k,
                 result["name"])
        return _back(url_for("clusters_page", analysis=analysis, method=result["method"], k=k))

    @app.route("/api/analyses")
    def api_analyses():
        return jsonify(_json_ready(analyses(tables)))

    @app.route("/api/clusters/<analysis>")
    def api_clusters(analysis):
        _, cut = _cut(analysis)
        for c in cut["clusters"]:
            for s in c["samples"]:
                s["thumbnail"] = url_for("thumbnail", image_id=s["image_id"])
            c["gallery"] = url_for("gallery", analysis=analysis, method=cut["method"], k=cut["k"], cluster=c["cluster"])
        return jsonify(_json_ready(cut))

    @app.route("/api/clusters/<analysis>/names", methods=["POST"])
    def api_cluster_names(analysis):
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not {"method", "k", "cluster", "name"} <= set(body) or \
                not isinstance(body["k"], int) or not isinstance(body["cluster"], int):
            raise CorrectionError('send JSON {"method": "ward", "k": 10, "cluster": 3, "name": "Nanorods"} '
                                  '(null or "" removes the name)')
        if not (body["name"] is None or isinstance(body["name"], str)):
            raise CorrectionError("the name is text, or null")
        return jsonify(_json_ready(name_cluster(tables, analysis, str(body["method"]), body["k"], body["cluster"],
                                                body["name"], g.user, cut_of, wait_s=web.write_wait_s)))

    @app.route("/runs")
    def runs_page():
        return render_template("runs.html", runs=runs(tables))

    @app.route("/models")
    def models_page():
        every = models(tables)
        known = [m["model_version"] for m in every]
        chosen = request.args.getlist("model") or known[:MODELS_SHOWN]
        unknown = [m for m in chosen if m not in known]
        if unknown:
            raise FilterError(f"model: {', '.join(unknown)} is not in sem.models (there are {', '.join(known) or 'none'})")
        history = accuracy_per_epoch(tables, chosen)
        return render_template("models.html", models=every, chosen=chosen, chart=line_chart(history),
                               confusions=[_confusion(m) for m in chosen])

    def _confusion(model_version: str) -> dict:
        """The test confusion matrix the training run kept in the registry (metadata.json)."""
        import json

        from semspark import registry

        try:
            _, _, folder = registry.resolve(model_version)
            metadata = json.loads((folder / "metadata.json").read_text())
        except (registry.RegistryError, OSError, ValueError):
            return {"model_version": model_version, "classes": [], "matrix": []}
        return {"model_version": model_version, "classes": metadata.get("class_names") or [],
                "matrix": metadata.get("confusion_matrix") or []}

    # --- API --------------------------------------------------------------------------------
    @app.route("/api/images")
    def api_images():
        found = search(tables, Filters.from_args(request.args, web.page_size), cut_of)
        pictures.thumbnails({row["image_id"]: row["scale_bin"] for row in found["images"]})
        for row in found["images"]:
            row["thumbnail"] = url_for("thumbnail", image_id=row["image_id"])
        return jsonify(_json_ready(found))

    @app.route("/api/images/<image_id>")
    def api_image(image_id):
        return jsonify(_json_ready(_image_or_404(image_id)))

    @app.route("/api/images/<image_id>/labels", methods=["GET", "POST"])
    def api_labels(image_id):
        row = _image_or_404(image_id)
        if request.method == "GET":
            return jsonify(_json_ready({"image_id": image_id, "current_label": row["current_label"],
                                        "history": row["label_history"]}))
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "label" not in body or not (body["label"] is None or isinstance(body["label"], str)):
            raise CorrectionError('send JSON {"label": "Category"} (null or "" removes the label)')
        return jsonify(_json_ready(correct_label(tables, image_id, body["label"], g.user,
                                                 wait_s=web.write_wait_s)))

    @app.route("/api/images/<image_id>/scale", methods=["POST"])
    def api_scale(image_id):
        _image_or_404(image_id)
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "value" not in body or "unit" not in body:
            raise CorrectionError('send JSON {"value": 500, "unit": "nm", "bar_px": 120} (bar_px optional)')
        return jsonify(_json_ready(correct_scale(tables, image_id, body["value"], body["unit"], body.get("bar_px"),
                                                 g.user, wait_s=web.write_wait_s)))

    @app.route("/api/runs")
    def api_runs():
        return jsonify(_json_ready(runs(tables)))

    @app.route("/api/models")
    def api_models():
        every = models(tables)
        history = accuracy_per_epoch(tables, [m["model_version"] for m in every])
        for m in every:
            m["test_accuracy_per_epoch"] = history.get(m["model_version"], [])
        return jsonify(_json_ready(every))

    @app.route("/api/whoami")
    def whoami():
        return jsonify(user=g.user, csrf=session.get("csrf") if not g.by_token else None)

    def _image_or_404(image_id):
        if not valid_image_id(image_id):
            abort(404, f"no image {image_id!r}: an image id is 64 hexadecimal digits (its SHA-256)")
        row = image(tables, image_id)
        if row is None:
            abort(404, f"no image {image_id} in the catalog")
        return row

    def _png(png: bytes, cache_seconds: int):
        response = app.response_class(png, mimetype="image/png")
        response.headers["Cache-Control"] = f"private, max-age={cache_seconds}"
        return response

    return app


def serve(config: Config, host: str | None = None, port: int | None = None, threads: int = 8) -> None:
    """Serve until interrupted (waitress: a production WSGI server)."""
    from waitress import serve as waitress_serve

    import threading

    app = create_app(config)
    parts = app.extensions["semspark"]
    threading.Thread(target=lambda: parts["neighbours"].warm(production_model(parts["tables"])),
                     name="more-like-this-index", daemon=True).start()
    host, port = host or config.web.host, port or config.web.port
    if host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: other hosts can reach it; put TLS (a proxy) in front%s", host,
                    "" if config.web.secure_cookies else " and set web.secure_cookies: true")
    log.info("semspark web on http://%s:%d/ (Ctrl-C stops it)", host if ":" not in host else f"[{host}]", port)
    waitress_serve(app, host=host, port=port, threads=threads, ident="semspark")
