"""Budgets, quotas and rate limits: scopes, reservations and counters."""
