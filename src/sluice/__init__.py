"""Sluice: a fast, exact, small production gateway for LLM APIs."""

__version__ = "0.1.0"
