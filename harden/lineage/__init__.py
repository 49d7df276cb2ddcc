"""Lineage: the MLflow tracker (runs, artifacts, the registry) and registry reads for the CLI."""
