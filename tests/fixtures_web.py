"""Web fixtures: the demo web served on 127.0.0.1 (built by tasks/demo_web.py)."""
