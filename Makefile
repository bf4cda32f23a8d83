# The two commands of a fresh clone (see README):
#   make demo   the whole pipeline locally with a real training run
#   make test   the whole test suite against real Kafka and ClickHouse
.PHONY: demo test lint kafka-start kafka-stop clean

demo:
	@bash deploy/local/demo.sh

test:
	@bash deploy/local/test.sh

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

kafka-start:
	@bash deploy/local/kafka.sh start

kafka-stop:
	@bash deploy/local/kafka.sh stop

clean:
	-@bash deploy/local/kafka.sh stop
	rm -rf .traintrail
