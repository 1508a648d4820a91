"""The shard stage: the kept samples as verified training WebDataset shards."""
