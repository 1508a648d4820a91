"""The curate stage: per-shard features, SQL rules, dedup, decontamination, the gate and report."""
