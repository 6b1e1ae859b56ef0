"""Provider dialects: pure translation between OpenAI's wire format and each provider's. No I/O."""
