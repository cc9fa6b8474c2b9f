"""Thin Prefect @task wrappers around dsclab. Tasks pass store paths, specs and keys, not tensors."""
