"""Virtual keys (HMAC digests only) and the admin key."""
