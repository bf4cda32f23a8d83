"""Session fixtures: a real Kafka broker and a real ClickHouse engine."""

pytest_plugins = ["tests.fixtures.kafka", "tests.fixtures.clickhouse"]
