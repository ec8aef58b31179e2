"""REST API and live dashboard."""
