"""Durable state. SQLite by default."""
