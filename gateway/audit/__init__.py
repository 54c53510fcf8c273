"""The audit trail: one call, ``await audit.record(tag, ...)``, used by every part of the platform."""
