"""The ledger: one row per request, written off the hot path."""
