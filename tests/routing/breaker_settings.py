"""Gateway settings for breaker tests: circuits open fast and cool down fast."""

from gateway.settings import *  # noqa: F403

SLUICE_BREAKER_FAILURES = 2
SLUICE_BREAKER_COOLDOWN_SECONDS = 1.0
