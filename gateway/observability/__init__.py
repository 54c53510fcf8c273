"""Observability beyond metrics: OpenTelemetry tracing (gateway.observability.tracing)."""
