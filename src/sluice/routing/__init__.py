"""Model aliases → attempt plans. Pure."""
