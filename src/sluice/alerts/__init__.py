"""Alerts before the bill: rules over the budgets' counters and the ledger (``rules``), delivered to
webhooks, Slack and email. Work in progress: the rules are here; delivery and wiring come next."""
