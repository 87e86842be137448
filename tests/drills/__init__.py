"""Fault drills on a production-shape deployment (tests/drills/harness.py)."""
