"""Thin Prefect @task wrappers around the study kinds' stages (``tasks.stages``). Tasks pass store
paths, specs, cells and keys, not tensors."""
