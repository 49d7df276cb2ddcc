"""The pipeline schema (one settings module per domain, torch-free), YAML loading with every problem reported at
once, and the generated key reference."""
