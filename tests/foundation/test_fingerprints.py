"""Fingerprints that cannot miss a file or a field: every file a stage imports and every
config field it reads changes its fingerprint; nothing else does."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tasks.core.config import PipelineConfig
from tasks.core.lineage import (
    REPO,
    _hash_files,
    code_files,
    code_version_at,
    config_hash,
    reads_of,
)
from tasks.stages import PIPELINE, STAGES, stage

SECTIONS = ("storage", "crawl", "download", "curate", "shard", "train", "evaluate")


def _leaves(data: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every field; a list (seeds, datasets) is one field."""
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _leaves(v, f"{prefix}{k}.")]
    return [prefix.rstrip(".")]


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1 if value != float("inf") else 1.0
    if isinstance(value, list):
        return [*value, "x"]
    return f"{value}x"


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


def _covered(path: str, reads: tuple[str, ...]) -> bool:
    return any(path == r or path.startswith(f"{r}.") for r in ("storage", *reads))


def test_every_config_field_changes_exactly_the_stages_that_read_it():
    base = PipelineConfig().model_dump(mode="json")
    paths = _leaves(base)
    assert len(paths) > 100  # every field of every section, not a hand-picked few
    before = {s: json.dumps(reads_of(base, s), sort_keys=True) for s in STAGES}
    for path in paths:
        data = json.loads(json.dumps(base))
        value: Any = data
        for part in path.split("."):
            value = value[part]
        _set(data, path, _changed(value))
        for record in PIPELINE:
            after = json.dumps(reads_of(data, record.name), sort_keys=True)
            hashed = _covered(path, record.reads) and path not in record.unhashed
            assert (after != before[record.name]) == hashed, f"{path} and the {record.name} stage"


def test_download_rereads_the_ssrf_switch_and_curate_the_eval_sets():
    """The two cross-section reads the issue found missing."""
    assert _covered("crawl.allow_private_networks", stage("download").reads)
    assert _covered("evaluate.datasets", stage("curate").reads)
    assert not _covered("evaluate.batch_size", stage("curate").reads)


def test_run_only_fields_leave_the_curate_hash_alone():
    """Memory limit, spill folder and search shards change how curate runs, not what it
    writes."""
    cfg = PipelineConfig()
    run_only = {"duckdb_memory_limit": "2GB", "duckdb_temp_dir": "/scratch/duckdb",
                "near_dup_shards": 4}  # fmt: skip
    changed = cfg.model_copy(update={"curate": cfg.curate.model_copy(update=run_only)})
    assert config_hash(changed, "curate") == config_hash(cfg, "curate")
    assert set(stage("curate").unhashed) == {f"curate.{k}" for k in run_only}


def _config_reads_in_source(path: Path) -> set[str]:
    """What a module reads of a pipeline config (a name or attribute called ``cfg`` or
    ``config``): ``section.field`` for ``cfg.section.field``, ``section`` where the section is
    used whole (passed on, dumped), ``name`` for ``cfg.name``."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Attribute) or node.attr not in (*SECTIONS, "name"):
            continue
        base = node.value
        base_name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", "")
        if base_name not in {"cfg", "config"}:
            continue
        parent = parents.get(node)
        if node.attr != "name" and isinstance(parent, ast.Attribute):
            found.add(f"{node.attr}.{parent.attr}")
        else:
            found.add(node.attr)
    return found


@pytest.mark.parametrize("name", STAGES)
def test_stage_code_reads_no_config_field_it_does_not_declare(name):
    """Every ``cfg.<section>.<field>`` a stage's code touches is in its record's ``reads``:
    a new cross-section read without a declaration fails here."""
    record = stage(name)
    undeclared = {
        f"{f.relative_to(REPO)}: {read}"
        for f in code_files(name)
        if f.suffix == ".py" and f.parts[len(REPO.parts)] == "tasks"
        for read in _config_reads_in_source(f)
        if not _covered(read, record.reads)
    }
    assert undeclared == set()


@pytest.mark.parametrize("name", STAGES)
def test_code_files_hold_every_module_the_stage_imports(name):
    """Cross-check of the import walk: every first-party module that importing the stage's
    body (and what it runs) loads is hashed."""
    record = stage(name)
    modules = [record.body.partition(":")[0], *record.runs]
    script = (
        "import importlib, sys, json\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(getattr(m, '__file__', None) or '' for n, m in "
        "list(sys.modules.items()) if n.split('.')[0] in ('tasks', 'model'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
    )
    loaded = {Path(f).resolve() for f in json.loads(out.stdout.splitlines()[-1]) if f}
    missing = sorted(str(f) for f in loaded - set(code_files(name)))
    assert missing == []


def test_files_the_hand_written_lists_missed_are_fingerprinted():
    curate = {str(f.relative_to(REPO)) for f in code_files("curate")}
    for rel in ("tasks/curate/clip_score.py", "tasks/curate/plots.py", "tasks/core/sql.py",
                "model/clip.py", "sql/curate/rules.sql"):  # fmt: skip
        assert rel in curate
    train = {str(f.relative_to(REPO)) for f in code_files("train")}
    assert {"model/train.py", "model/data.py", "model/loss.py"} <= train


def test_editing_any_file_changes_exactly_the_stages_that_depend_on_it(tmp_path):
    """Over every source file: an edit changes the code version of each stage whose
    package holds it or whose code imports it, and of no other stage."""
    for folder in ("tasks", "model", "sql"):
        shutil.copytree(REPO / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    before = {s: code_version_at(s, tmp_path) for s in STAGES}
    files = {s: set(code_files(s, tmp_path)) for s in STAGES}
    every = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert len(every) > 70
    for path in every:
        original = path.read_bytes()
        path.write_bytes(original + b"\n# edited\n")
        try:
            changed = {s for s in STAGES if code_version_at(s, tmp_path) != before[s]}
        finally:
            path.write_bytes(original)
        rel = path.relative_to(tmp_path)
        expected = {s for s in STAGES if path in files[s]}
        assert changed == expected, rel
        owner = rel.parts[1] if rel.parts[0] in ("tasks", "sql") and len(rel.parts) > 2 else None
        if owner in STAGES:
            assert owner in changed, f"{rel} is in the {owner} package but not its fingerprint"
    # Hashing is over paths and bytes: same files, same version.
    assert _hash_files(sorted(files["crawl"]), tmp_path) == before["crawl"]
