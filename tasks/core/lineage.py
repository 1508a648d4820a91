"""Fingerprints and lineage: when is a stage's output up to date?

A stage is up to date when its manifest exists and
- its config hash equals the hash of every config field it reads now (``Stage.reads``);
- its code version equals the hash of its package and every first-party module that
  package imports, directly or not (found by following imports, so no file can be missed);
- every upstream manifest it consumed is still the one on storage (digests recorded in its
  manifest), and every upstream stage is itself up to date.
"""

from __future__ import annotations

import ast
import hashlib
import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tasks.core.config import PipelineConfig
from tasks.core.manifest import manifest_digest, read_manifest
from tasks.core.storage import Storage
from tasks.stages import PIPELINE, STAGES, stage

REPO = Path(__file__).resolve().parents[2]
FIRST_PARTY = ("tasks", "model")
"""Packages whose modules count as a stage's code; third-party code is pinned by the lock."""
PACKAGE_DATA = {"model.config": ("model/configs",)}
"""Data folders a module reads at run time; a stage's SQL is ``sql/<stage>/``."""


# ---- code ---------------------------------------------------------------------------------


def _module_file(module: str, root: Path) -> Path | None:
    base = root.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path, module: str) -> set[str]:
    """First-party modules ``path`` imports anywhere (top level or inside functions)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    return set(_imports_in(path.read_text(encoding="utf-8"), package))


@cache
def _imports_in(source: str, package: str) -> frozenset[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # submodules
    return frozenset(n for n in names if n.split(".")[0] in FIRST_PARTY)


def code_files(name: str, root: Path = REPO) -> list[Path]:
    """Every file a stage's output depends on: the modules of ``tasks/<name>/`` and of
    ``Stage.runs``, every first-party module they import (transitively), the data folders those modules read
    and the stage's SQL (``sql/<name>/``).

    A parent package's ``__init__`` is hashed but its own imports are not followed unless a
    module imports a name from it: ``model.train_config`` does not make a stage depend on
    the whole ``model`` package.
    """
    record = stage(name)
    todo = [(record.package, True), *((m, True) for m in record.runs)]
    todo += [
        (f"{record.package}.{p.stem}", True) for p in sorted((root / "tasks" / name).glob("*.py"))
    ]
    seen: dict[str, Path] = {}
    followed: set[str] = set()
    while todo:
        module, follow = todo.pop()
        path = _module_file(module, root)
        if path is None or (module in followed) or (module in seen and not follow):
            continue  # a name imported from a module, not a module; or done already
        seen[module] = path
        parts = module.split(".")
        todo += [(".".join(parts[:i]), False) for i in range(1, len(parts))]
        if follow:
            followed.add(module)
            todo += [(m, True) for m in sorted(_imported_modules(path, module))]
    files = set(seen.values())
    folders = [f"sql/{name}", *(d for m, dirs in PACKAGE_DATA.items() if m in seen for d in dirs)]
    for folder in folders:
        files.update(p for p in (root / folder).rglob("*") if p.is_file() and p.suffix != ".pyc")
    return sorted(files)


@cache
def code_version(name: str) -> str:
    """sha256 over a stage's code files (paths and bytes). Cached: code does not change
    while a process runs."""
    return code_version_at(name, REPO)


def code_version_at(name: str, root: Path) -> str:
    """``code_version`` of the source tree at ``root`` (a checkout, or a copy in a test)."""
    return _hash_files(code_files(name, root), root)


def _hash_files(files: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(root)).encode() + b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ---- config -------------------------------------------------------------------------------


def config_reads(cfg: PipelineConfig, name: str) -> dict[str, Any]:
    """The config values a stage reads, by dotted path (``storage`` always: outputs move with
    it; a section means all of its fields, less the stage's ``unhashed`` ones)."""
    return reads_of(cfg.model_dump(mode="json"), name)


def reads_of(data: dict[str, Any], name: str) -> dict[str, Any]:
    """``config_reads`` of a config already dumped to plain data."""
    record = stage(name)
    values: dict[str, Any] = {}
    for path in ("storage", *record.reads):
        value: Any = data
        for part in path.split("."):
            value = value[part]
        values[path] = value
    for path in record.unhashed:
        section, *rest = path.split(".")
        values[section] = {**values[section]}  # a copy: ``data`` stays whole
        values[section].pop(".".join(rest))
    return values


def config_hash(cfg: PipelineConfig, name: str) -> str:
    return _stable_hash(config_reads(cfg, name))


def _stable_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


# ---- lineage ------------------------------------------------------------------------------


def upstream_of(cfg: PipelineConfig, name: str) -> tuple[str, ...]:
    """The stages whose outputs ``name`` reads under this config."""
    record = stage(name)
    if record.standalone_when and _field(cfg, record.standalone_when) is not None:
        return ()
    return record.upstream


def _field(cfg: PipelineConfig, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def upstream_digests(storage: Storage, cfg: PipelineConfig, name: str) -> dict[str, str | None]:
    """Digest of each upstream manifest on storage now (None: that stage has not finished)."""
    digests: dict[str, str | None] = {}
    for up in upstream_of(cfg, name):
        manifest = read_manifest(storage, up)
        digests[up] = None if manifest is None else manifest_digest(manifest)
    return digests


@dataclass(frozen=True)
class Status:
    """A stage's state: ``done``, ``stale`` or ``not run``, and why, in words."""

    state: str
    reason: str = ""

    @property
    def done(self) -> bool:
        return self.state == "done"


def stage_status(storage: Storage, cfg: PipelineConfig, name: str) -> Status:
    return pipeline_status(storage, cfg)[name]


def pipeline_status(storage: Storage, cfg: PipelineConfig) -> dict[str, Status]:
    """Every stage's status, upstream first (a stage is stale when an upstream one is)."""
    statuses: dict[str, Status] = {}
    for record in PIPELINE:
        statuses[record.name] = _status(storage, cfg, record.name, statuses)
    return statuses


def _status(
    storage: Storage, cfg: PipelineConfig, name: str, upstream: dict[str, Status]
) -> Status:
    manifest = read_manifest(storage, name)
    if manifest is None:
        return Status("not run")
    if manifest.get("config_hash") != config_hash(cfg, name):
        changed = _changed_fields(manifest.get("config", {}), config_reads(cfg, name))
        return Status("stale", f"config changed: {', '.join(changed) or 'fields it reads'}")
    if manifest.get("code_version") != code_version(name):
        return Status("stale", "its code changed")
    recorded = manifest.get("upstream", {})
    for up, digest in upstream_digests(storage, cfg, name).items():
        if not upstream[up].done:
            return Status("stale", f"because {up} is {upstream[up].state}")
        if recorded.get(up) != digest:
            return Status("stale", f"because {up} was rerun since")
    return Status("done")


def _changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed: list[str] = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            changed += _changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}")
    return changed


class StaleUpstream(RuntimeError):
    """A stage asked to run on an upstream output that is missing or out of date."""

    def __init__(self, name: str, upstream: str, status: Status, rerun: list[str]) -> None:
        self.stage, self.upstream, self.rerun = name, upstream, rerun
        what = "has not finished" if status.state == "not run" else f"is stale ({status.reason})"
        super().__init__(
            f"{name}: upstream stage {upstream!r} {what}; run "
            f"`clipflow run CONFIG --stages {','.join(rerun)}` "
            f"(or add --with-upstream to rerun what is stale first)"
        )


def stale_upstream(statuses: dict[str, Status], cfg: PipelineConfig, names: list[str]) -> list[str]:
    """The stages, outside ``names``, that must run before ``names`` can: every upstream
    stage (transitively) that is not up to date, in pipeline order."""
    needed: set[str] = set()
    todo = list(names)
    while todo:
        for up in upstream_of(cfg, todo.pop()):
            if up not in names and up not in needed and not statuses[up].done:
                needed.add(up)
            if up not in names:
                todo.append(up)
    return [s for s in STAGES if s in needed]


def check_upstream(statuses: dict[str, Status], cfg: PipelineConfig, names: list[str]) -> None:
    """Refuse (StaleUpstream, naming the stage and the command to run) when a stage in
    ``names`` reads from a stage outside ``names`` that is not up to date."""
    for name in [s for s in STAGES if s in names]:
        for up in upstream_of(cfg, name):
            if up not in names and not statuses[up].done:
                stale = stale_upstream(statuses, cfg, names)
                rerun = [s for s in STAGES if s in names or s in stale]
                raise StaleUpstream(name, up, statuses[up], rerun)
