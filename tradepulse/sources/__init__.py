"""Market-data sources: Massive WebSocket client and ingest, Finnhub news poller, and the simulator."""
