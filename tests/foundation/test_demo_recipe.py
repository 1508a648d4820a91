"""bench/demo_recipe.py: a retrain's config differs from the demo's only where it must."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from tasks.core.config import load_config

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("demo_recipe", REPO / "bench" / "demo_recipe.py")
assert _spec is not None and _spec.loader is not None
demo_recipe = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(demo_recipe)

DEMO = REPO / "configs" / "demo.yaml"


def test_a_retrain_changes_the_shard_seed_and_the_overrides_only(tmp_path):
    """Every other value, the storage root included, stays as the demo's, so crawl, download
    and curate stay up to date and the retrain reuses their outputs."""
    demo = load_config(DEMO).model_dump(mode="json")
    data = demo_recipe.run_config(DEMO, 2, ["train.batch_size=128", "train.lr=1e-3"])
    assert data["shard"] == {**demo["shard"], "seed": 2}
    assert data["train"] == {**demo["train"], "batch_size": 128, "lr": 1e-3}
    rest = ("shard", "train")
    assert {k: v for k, v in data.items() if k not in rest} == {
        k: v for k, v in demo.items() if k not in rest
    }
    path = tmp_path / "elsewhere" / "seed2.yaml"  # where the bench writes it
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).storage.root == load_config(DEMO).storage.root


@pytest.mark.parametrize("bad", ["train.batch_size", "batch_size=128", "nosuch.key=1"])
def test_a_malformed_override_is_refused(bad):
    with pytest.raises(SystemExit, match="section.key=value"):
        demo_recipe.run_config(DEMO, 0, [bad])
