"""OpenAI wire types, request validation and SSE framing. Pure: no I/O."""
