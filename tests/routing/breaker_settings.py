"""Gateway settings for breaker tests: circuits open fast and cool down fast."""

from gateway.settings import *  # noqa: F403
from gateway.settings import SLUICE

SLUICE = {**SLUICE, "BREAKER_FAILURES": 2, "BREAKER_COOLDOWN_SECONDS": 1.0}
