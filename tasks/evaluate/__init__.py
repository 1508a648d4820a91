"""The evaluate stage: zero-shot classification, retrieval and linear probes."""
