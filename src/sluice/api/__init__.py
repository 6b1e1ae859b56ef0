"""The OpenAI-compatible HTTP surface: a raw ASGI app for /v1/* and the probes."""
