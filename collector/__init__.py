"""traintrail collector: Kafka → ClickHouse, the query API and CLI (`traintrail`)."""
