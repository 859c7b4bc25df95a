"""The audit trail's part of the management API under ``/api/v1/``."""
