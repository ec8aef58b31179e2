"""`tradepulse bench`: full-path load test harness (simulator → ingest → Kafka → runner → hot store) and
the drain comparison with the faust-streaming / Quix Streams peers. Entry point: `harness.run_bench`."""
