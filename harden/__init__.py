"""harden: deployment-time backdoor hardening for image classifiers."""

__version__ = "0.1.0"
