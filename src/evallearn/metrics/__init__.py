"""Metrics: ``requests()`` -> ``update()`` -> ``compute()``, with mergeable state."""
