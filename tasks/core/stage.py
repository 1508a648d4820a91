"""What a stage is: the ``Stage`` record, and the ``RunContext`` its body runs with.

A stage's body is a plain function ``body(cfg, storage, ctx) -> StageResult``: typed config
and storage in, counts and output URIs out. Everything else about a stage (what it reads,
what it depends on, how the CLI and Prefect present it) is data in its ``Stage`` record, in
``tasks/stages.py``; the stage list, the CLI, the flows and the fingerprints derive from it.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

log = logging.getLogger(__name__)

MapTasks = Callable[[Callable[[Any], Any], Sequence[Any]], list[Any]]
"""Runs ``fn`` over ``items`` and returns the results in order: a list comprehension in
plain Python, mapped Prefect tasks (spread by the flow's task runner) in a flow."""


def map_in_process(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    return [fn(item) for item in items]


@dataclass(frozen=True)
class RunContext:
    """How a stage body is being run: forced or not, where its progress lines go, and how
    its per-shard work is mapped."""

    force: bool = False
    """The user asked to redo the stage from scratch (no resume of partial outputs)."""
    log_line: Callable[[str], None] = log.info
    map_tasks: MapTasks = map_in_process


class AccountingError(RuntimeError):
    """A stage's counts do not add up: some input was lost or counted twice."""


@dataclass(frozen=True)
class Identity:
    """A stage's accounting identity: ``counts[total] == sum of counts[part]``, where a part
    ending in ``*`` sums every count with that prefix (``failed_*``). The runner asserts it
    before it writes the manifest, so a stage whose counts do not add up fails."""

    total: str
    parts: tuple[str, ...]

    def is_part(self, key: str) -> bool:
        """Whether count ``key`` is one of the parts (by name, or by a ``prefix*``)."""
        return any(key.startswith(p[:-1]) if p.endswith("*") else key == p for p in self.parts)

    def check(self, stage: str, counts: dict[str, Any]) -> None:
        terms = {key: int(value) for key, value in counts.items() if self.is_part(key)}
        missing = [p for p in (self.total, *self.parts) if not p.endswith("*") and p not in counts]
        if missing:
            raise AccountingError(f"{stage}: counts lack {missing} (have {sorted(counts)})")
        if sum(terms.values()) != int(counts[self.total]):
            shown = " + ".join(f"{k} {v}" for k, v in terms.items())
            raise AccountingError(
                f"{stage}: {self.total} {counts[self.total]} != {shown} = {sum(terms.values())}"
            )

    def __str__(self) -> str:
        return f"{self.total} == {' + '.join(self.parts)}"


@dataclass(frozen=True)
class CliOption:
    """A ``clipflow <stage>`` option that sets one config field for this run, so it takes
    part in the stage's config hash like any other field."""

    flag: str
    field: str
    """Dotted config path it sets, e.g. ``evaluate.checkpoint``."""
    help: str


@dataclass(frozen=True)
class Stage:
    """One pipeline stage: the one place that says what it is.

    ``package`` holds its logic; the code fingerprint covers that package and every
    first-party module it imports (found by following imports, never listed by hand).
    """

    name: str
    summary: str
    """One line: the CLI help and the flow's description."""
    upstream: tuple[str, ...]
    """Stages whose outputs this one reads."""
    reads: tuple[str, ...]
    """Config it reads: a section (``crawl``) or one field of another (``evaluate.datasets``).
    ``storage.root`` is always read (outputs move with it)."""
    body: str
    """``module:function``, imported only when the stage runs (``status`` stays light)."""
    unhashed: tuple[str, ...] = ()
    """Fields under ``reads`` that change how the stage runs, never what it writes (memory
    limits, spill folders): left out of its config hash, so changing one reruns nothing."""
    outputs: tuple[str, ...] = ()
    """Folders under ``storage.root`` it writes; a rerun sweeps the temporary files a killed
    run left in them (``model.atomic.TEMP_MARK``)."""
    runs: tuple[str, ...] = ()
    """Modules it runs outside its own imports (a subprocess entry point such as
    ``python -m model.train``): fingerprinted like the package, with what they import."""
    standalone_when: str | None = None
    """A config field that, when set, means the stage reads no upstream output (evaluate
    with a given checkpoint)."""
    options: tuple[CliOption, ...] = ()
    accounting: tuple[Identity, ...] = ()
    """Identities its counts must satisfy; checked before its manifest is written."""
    publish: str | None = None
    """``module:function(cfg, manifest)`` publishing Prefect artifacts after a run."""
    artifacts: tuple[str, ...] = field(default=())
    """Artifact keys the publisher creates (for the docs and the UI tests)."""

    @property
    def package(self) -> str:
        return f"tasks.{self.name}"

    def load_body(self) -> Callable[..., Any]:
        return load_object(self.body)


def load_object(reference: str) -> Any:
    """``package.module:name`` -> the object."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


PLAIN_RUN = RunContext()
"""A stage body's default context: not forced, logged, shards mapped in this process."""
