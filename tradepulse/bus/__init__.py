"""Kafka adapters: local broker, topics, producers and consumers, and the micro-batch runner."""
