"""Runnable examples of the channel: run each file, as `python examples/pipeline.py`."""
