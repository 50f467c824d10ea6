"""Observability: a trace per job (OpenTelemetry), Prometheus metrics, alert rules, and JSON
logs that name their job and trace. Nothing is sent anywhere unless the user configures it."""
