"""The pipeline's stages, in order. Adding a stage means adding a record here and a package
``tasks/<name>/`` whose body has the signature ``body(cfg, storage, ctx) -> StageResult``.

The stage list, the order, which stages must be up to date before another runs, the CLI
sub-commands, the Prefect flows and the fingerprints all derive from these records.
"""

from __future__ import annotations

from tasks.core.stage import CliOption, Identity, Stage

PIPELINE: tuple[Stage, ...] = (
    Stage(
        name="crawl",
        summary="crawl the seed sites and read WAT/WARC files into candidate (url, caption) pairs",
        upstream=(),
        reads=("crawl",),
        body="tasks.crawl.stage:crawl",
        outputs=("crawl",),
        # The stage checks its page, link and record identities itself; this one joins it
        # to download's input.
        accounting=(Identity("pairs_found", ("pairs_after_dedup", "duplicates_dropped")),),
    ),
    Stage(
        name="download",
        summary="fetch every crawl candidate with img2dataset (guarded); resume unless forced",
        upstream=("crawl",),
        # The SSRF guard's switch lives in crawl: downloads made with it off are not reused
        # once it is back on.
        # curate.url_blocklist: a listed host is never fetched, on any redirect hop either.
        reads=(
            "download",
            "crawl.allow_private_networks",
            "crawl.allow_private_hosts",
            "curate.url_blocklist",
        ),
        body="tasks.download.stage:download",
        outputs=("download",),
        accounting=(Identity("candidates", ("successes", "failed_*")),),
    ),
    Stage(
        name="curate",
        summary="filter, dedup and decontaminate the downloads; gate them on data quality",
        upstream=("download",),
        reads=("curate", "evaluate.datasets"),  # decontamination compares with eval images
        body="tasks.curate.stage:curate",
        # How the work is split, not what it finds (near_dup_shards: tasks/curate/knn_shards.py).
        unhashed=("curate.duckdb_memory_limit", "curate.duckdb_temp_dir", "curate.near_dup_shards"),
        outputs=("curate",),
        accounting=(Identity("input", ("kept", "dropped_*")),),
        publish="flows.artifacts:publish_curate",
        artifacts=("curate-funnel", "curate-summary", "curate-data-docs"),
    ),
    Stage(
        name="shard",
        summary="reshard the kept samples into verified WebDataset shards; resume unless forced",
        # Curate's table names samples by download key, and shard copies their bytes from
        # the download tars: both must be the ones curate ran on.
        upstream=("curate", "download"),
        reads=("shard",),
        body="tasks.shard.stage:shard",
        outputs=("shards",),
        accounting=(Identity("kept", ("samples",)),),
    ),
    Stage(
        name="train",
        summary="train CLIP on the shards with torchrun, resuming a compatible earlier run",
        upstream=("shard",),
        reads=("train", "name"),  # the run id torchrun's rendezvous uses
        body="tasks.train.launcher:train",
        outputs=("train",),
        runs=("model.train",),  # torchrun -m model.train
        publish="flows.artifacts:publish_train",
        artifacts=("train-final-metrics", "train-loss-curve"),
    ),
    Stage(
        name="evaluate",
        summary="evaluate a checkpoint (default: train's latest) on the configured datasets",
        upstream=("train",),
        # Without evaluate.model / evaluate.vocab the train stage's choice is used.
        reads=("evaluate", "train.model", "train.vocab"),
        body="tasks.evaluate.stage:run_evaluate",
        outputs=("eval",),
        standalone_when="evaluate.checkpoint",
        options=(
            CliOption("--checkpoint", "evaluate.checkpoint", "any OpenCLIP-format checkpoint"),
            CliOption("--model", "evaluate.model", "its architecture name or config JSON path"),
        ),
        publish="flows.artifacts:publish_evaluate",
        artifacts=("evaluate-results", "evaluate-results-md"),
    ),
)

STAGES: tuple[str, ...] = tuple(s.name for s in PIPELINE)
_BY_NAME = {s.name: s for s in PIPELINE}


def stage(name: str) -> Stage:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; stages are {', '.join(STAGES)}") from None


def downstream(name: str) -> list[str]:
    """``name`` and every stage that reads its output, directly or not, in pipeline order."""
    reached = {stage(name).name}
    for s in PIPELINE:
        if reached & set(s.upstream):
            reached.add(s.name)
    return [s for s in STAGES if s in reached]


def upstream_closure(names: list[str]) -> list[str]:
    """Every stage ``names`` read from, directly or not (config-independent), in order."""
    needed: set[str] = set()
    todo = list(names)
    while todo:
        for up in stage(todo.pop()).upstream:
            if up not in needed:
                needed.add(up)
                todo.append(up)
    return [s for s in STAGES if s in needed]
