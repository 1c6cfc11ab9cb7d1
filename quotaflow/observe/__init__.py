"""What quotaflow decided and what is left: OpenTelemetry metrics, ``quotaflow status``, shadow
mode."""
