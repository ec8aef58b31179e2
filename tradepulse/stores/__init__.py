"""Hot store, cold store and dead-letter queue backends."""
