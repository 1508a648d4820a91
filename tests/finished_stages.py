"""Outputs a test made by hand (img2dataset run directly, a curate table written with
pandas, a checkpoint copied in), recorded as finished stages through the same runner a real
stage uses, upstream first, so lineage holds and a downstream stage will run on them."""

from __future__ import annotations

from typing import Any

from tasks.core.config import PipelineConfig
from tasks.core.manifest import StageResult
from tasks.core.runner import run_stage
from tasks.stages import STAGES, stage, upstream_closure


def record_finished(cfg: PipelineConfig, **counts: dict[str, Any]) -> None:
    """Record each named stage (``curate={"kept": 9}``) and every stage upstream of it as
    finished, with the given counts."""
    names = [*upstream_closure(list(counts)), *counts]
    for name in [s for s in STAGES if s in names]:
        result = StageResult(counts=balanced(name, counts.get(name, {})))
        run_stage(name, cfg, lambda storage, result=result: result, force=True)


def balanced(name: str, counts: dict[str, Any]) -> dict[str, Any]:
    """``counts`` completed so that the stage's accounting identities hold: a missing named
    part counts 0 and a missing total is the sum of the parts (the runner checks them)."""
    counts = dict(counts)
    for identity in stage(name).accounting:
        for part in identity.parts:
            if not part.endswith("*"):
                counts.setdefault(part, 0)
        if identity.total not in counts:
            counts[identity.total] = sum(v for k, v in counts.items() if identity.is_part(k))
    return counts
