"""Pure processing core: windowed features, anomaly scoring, sentiment and the news join.

Nothing here imports Kafka, storage or network code; it takes columnar batches and state and returns
new state and outputs."""
