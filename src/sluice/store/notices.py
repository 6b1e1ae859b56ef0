"""The notices instances tell each other over Redis pub/sub besides key digests (``store.broadcast``);
here, apart from the Redis client, so that a gateway without Redis never imports it."""

PROVIDER_KEYS_CHANGED = "provider-keys"  # a message that is not a digest: reload the stored provider keys
HEALTH_PREFIX = "health "  # + JSON {id, s, n}: a deployment ejected for s seconds (0: back in service)
