"""``clipflow inspect``: a local web app over the stage outputs (funnel, galleries, duplicate
clusters, decontamination, search with the trained model, evaluation), local or on S3."""
