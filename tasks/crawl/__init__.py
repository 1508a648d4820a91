"""The crawl stage: seed sites and WAT/WARC files in, candidate (url, caption) pairs out."""
