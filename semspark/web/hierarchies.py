"""An analysis's clusters at any k, cut from the hierarchies its report keeps.

sem.clusters holds the cuts at ``analysis.cluster_ks`` only; ``semspark analyze`` also keeps each
method's linkage matrix, with the image ids in its row order and the run, in the report folder
(``$SEMSPARK_HOME/reports/<analysis>/hierarchies.npz``). A cut at another k is the job's own rule
(semspark.analysis.hierarchy.cut, SciPy's maxclust), so a kept k gives sem.clusters' numbering
exactly, and a cut is nested in every cut at a smaller k. Cuts are kept in memory, a few.
"""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np

KEPT_CUTS = 16


class HierarchyError(LookupError):
    """No hierarchy to cut; the message says why and what to run."""


class Hierarchies:
    def __init__(self, reports: Path):
        self.reports = reports
        self._loaded: dict[str, tuple[float, dict]] = {}
        self._cuts: dict[tuple, dict[str, int]] = {}
        self._lock = threading.Lock()

    def _load(self, analysis: str) -> dict:
        from semspark.analysis.job import HIERARCHIES

        path = self.reports / analysis / HIERARCHIES
        if "/" in analysis or analysis.startswith(".") or not path.is_file():
            raise HierarchyError(f"the report of {analysis} keeps no hierarchies ({path}): run semspark analyze "
                                 "again with this release to cut it at any k")
        stamp = path.stat().st_mtime
        kept = self._loaded.get(analysis)
        if kept is None or kept[0] != stamp:
            with np.load(path) as data:
                kept = (stamp, {name: data[name] for name in data.files})
            self._loaded[analysis] = kept
        return kept[1]

    def cut(self, analysis: str, analysis_run: str, method: str, k: int) -> dict[str, int]:
        """image id -> cluster of ``method``'s hierarchy cut at ``k``, for the run ``analysis_run``."""
        from semspark.analysis.hierarchy import cut

        with self._lock:
            key = (analysis, analysis_run, method, k)
            if key in self._cuts:
                return self._cuts[key]
            data = self._load(analysis)
            run = str(data["analysis_run"])
            if run != analysis_run:
                raise HierarchyError(f"the report of {analysis} is of run {run}, the tables of run {analysis_run}: "
                                     "the analysis is running again, or was; ask again when it has finished")
            if f"linkage_{method}" not in data:
                methods = sorted(n[len("linkage_"):] for n in data if n.startswith("linkage_"))
                raise HierarchyError(f"{analysis} has no {method} hierarchy (it has: {', '.join(methods) or 'none'})")
            ids = data["image_ids"]
            if not 2 <= k <= len(ids):
                raise HierarchyError(f"k: from 2 to the {len(ids)} images of {analysis}")
            clusters = cut(data[f"linkage_{method}"], k)
            found = dict(zip(ids.tolist(), clusters.astype(int).tolist()))
            if len(self._cuts) >= KEPT_CUTS:
                self._cuts.pop(next(iter(self._cuts)))
            self._cuts[key] = found
            return found
