"""Ingest, step 2: the function each Spark task runs over its batch of files (mapInPandas): read
the bytes (with retries), process each file (semspark/ingest/process.py), one PROCESSED row each."""
from __future__ import annotations

import logging

from semspark.config import Config
from semspark.schema import PROCESSED, image_encoder

log = logging.getLogger(__name__)


def make_worker(config: Config):
    """The function each Spark task runs over its batch of files (mapInPandas)."""
    ingest_config = config.ingest

    def process_partition(batches):
        import pandas as pd

        from semspark.ingest.ocr import find_tessdata
        from semspark.ingest.process import RawFile, process_file
        from semspark.storage import decode_text, read_bytes_retrying

        encode = image_encoder(ingest_config.image_size)
        tessdata = find_tessdata(ingest_config.tessdata_dir)
        for frame in batches:
            records = []
            # One file at a time: its bytes and pixels are dropped before the next is read, so a
            # task holds at most one file (<= ingest.max_file_bytes) and its decoded pixels (<=
            # ingest.max_pixels) whatever the batch's files weigh; what it keeps is small (the
            # stored PNG and the scale).
            for row in frame.itertuples(index=False):
                raw = RawFile(row.path, None)
                if int(row.size) > ingest_config.max_file_bytes:
                    raw.read_stage = "limits"
                    raw.read_error = (f"file of {int(row.size)} bytes is over the limit of "
                                      f"{ingest_config.max_file_bytes} (ingest.max_file_bytes)")
                else:
                    try:
                        raw.data = read_bytes_retrying(row.path)
                    except OSError as exc:   # after the retries: a failure that may pass (io)
                        raw.read_stage, raw.read_error = "io", f"could not read: {exc}"
                if isinstance(row.sidecar_path, str):
                    try:
                        raw.sidecar_text = decode_text(read_bytes_retrying(row.sidecar_path))
                    except OSError as exc:  # the image is still worth ingesting without it
                        log.warning("unreadable sidecar %s: %s", row.sidecar_path, exc)
                out = process_file(raw, ingest_config, tessdata, encode)
                del raw
                record = {"outcome": "image" if out.ok else "quarantine", "path": row.path,
                          "sha256": out.sha256, "size": int(row.size),
                          "modification_time": row.modification_time, "stage": out.stage,
                          "reason": out.reason, "format": out.format, "width": out.width,
                          "height": out.height, "bit_depth": out.bit_depth, "color": out.color,
                          "databar_px": out.databar_px, "phash": out.phash,
                          "chroma": out.chroma, "contrast": out.contrast,
                          "label": row.label if isinstance(row.label, str) else None,
                          "image": out.image_png}
                scale = out.scale.as_dict() if out.scale is not None else {}
                for key in ("scale_value", "scale_unit", "scale_bar_px", "nm_per_px", "scale_source",
                            "scale_mismatch", "metadata_nm_per_px", "scale_label_text", "scale_confidence",
                            "scale_reason", "scale_reader", "scale_bin"):
                    record[key] = scale.get(key)
                records.append(record)
            yield pd.DataFrame.from_records(records, columns=PROCESSED.fieldNames())

    return process_partition
