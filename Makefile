# Two commands: `make run` (everything, locally, with a demo payment) and `make test` (the whole suite).
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
PGHOST ?= 127.0.0.1
export DEBUG ?= 1
export DATABASE_URL ?= postgres://postgres@$(PGHOST):5432/payments
export REDIS_URL ?= redis://127.0.0.1:6379/0
export PUBLIC_BASE_URL ?= http://127.0.0.1:$(PORT)
export WEB_PORT := $(PORT)

.PHONY: run test lint check-alerts check-compose demo bench-api bench-api-ladder bench-recon bench-e2e chaos venv db migrate clean

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# Create the database named in DATABASE_URL if it is missing.
db: venv
	$(PY) -m payments_site.createdb

migrate: db
	$(PY) manage.py migrate --noinput

# .env: DEBUG=1, a secret key and the channels' development keys, which every process (and any new shell's
# manage.py) reads; git ignores it.
run: migrate
	@mkdir -p .dev
	@$(PY) manage.py write_dev_env --path .env --keys-dir .dev/keys > /dev/null
	@$(PY) manage.py setup_demo > /dev/null
	@echo
	@echo "API base URL:  http://127.0.0.1:$(PORT)/api/v1/   (docs: http://127.0.0.1:$(PORT)/api/docs/, admin: /admin/ admin/admin)"
	@echo "Demo key:      $$(cat .dev/demo_key)"
	@echo "Create an order:"
	@echo "  curl -s http://127.0.0.1:$(PORT)/api/v1/orders -H \"Authorization: Bearer $$(cat .dev/demo_key)\" \\"
	@echo "    -H 'Content-Type: application/json' -H \"Idempotency-Key: $$RANDOM$$RANDOM\" \\"
	@echo "    -d '{\"merchant_order_no\": \"A-'$$RANDOM'\", \"amount\": 1050, \"currency\": \"CNY\", \"channel\": \"sandbox\"}'"
	@echo "The demo process below shows a payment going through; run it again with: make demo"
	@echo
	@# Every process writes its metrics here for /metrics to add up; emptied at each start.
	@rm -rf .dev/metrics && mkdir -p .dev/metrics
	PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/.dev/metrics LOG_FORMAT=console $(VENV)/bin/honcho -e .env -f Procfile start

demo: venv
	$(PY) -m payments_site.demo --base-url http://127.0.0.1:$(PORT) --key-file .dev/demo_key

# The tests never read .env (settings.py), so a developer's DEBUG=1 there changes nothing. The whole suite
# runs its e2e tests a second time with RabbitMQ as the broker (quorum queues, publisher confirms), on a vhost
# of their own: `rabbitmqctl add_vhost payments_test` and `set_permissions -p payments_test guest '.*' '.*' '.*'`
# (.ci/run does both).
TEST_ENV := DEBUG=0 SECRET_KEY=test-only-secret-key SANDBOX_SECRET=test-sandbox-secret REDIS_URL=redis://127.0.0.1:6379/15
E2E_RABBITMQ_URL ?= amqp://guest:guest@127.0.0.1:5672/payments_test

test: venv
	@if command -v promtool > /dev/null; then $(MAKE) --no-print-directory check-alerts; \
	else echo "promtool not found: alert rules not checked (Debian: apt-get install prometheus; .ci/run does)"; fi
	$(TEST_ENV) $(PY) -m pytest $(PYTEST_ARGS)
	@if [ -n "$(PYTEST_ARGS)" ]; then exit 0; \
	elif $(PY) -c 'import sys, kombu; kombu.Connection(sys.argv[1], connect_timeout=2).ensure_connection(max_retries=1)' \
		'$(E2E_RABBITMQ_URL)' 2> /dev/null; then \
		echo "e2e tests again, on RabbitMQ"; \
		$(TEST_ENV) CELERY_BROKER_URL='$(E2E_RABBITMQ_URL)' $(PY) -m pytest tests/e2e; \
	else echo "RabbitMQ not reachable at $(E2E_RABBITMQ_URL): e2e tests not run on it (.ci/run starts it)"; fi

# Ruff, then mypy with the Django and DRF plugins (configured in pyproject.toml). The plugins load the
# settings, which need DEBUG=1 or a SECRET_KEY.
lint: venv
	$(VENV)/bin/ruff check .
	DEBUG=1 $(VENV)/bin/mypy .

# docker/compose.yml is valid (Debian's docker-compose package validates without a container engine).
check-compose:
	docker-compose -f docker/compose.yml config --quiet

# The alert rules and their unit tests (promtool comes with Debian's prometheus package).
check-alerts:
	promtool check rules docker/prometheus/alerts.yml
	cd docker/prometheus && promtool test rules alerts.test.yml

# A database of its own: a dispatcher of `make run` listening on the development one would charge the bench's
# orders through the simulators.
bench-api bench-api-ladder: DATABASE_URL = postgres://postgres@$(PGHOST):5432/payments_bench

bench-api: migrate
	DEBUG=0 SECRET_KEY=bench-only-secret-key $(PY) bench/api_create.py

# The same, plus what each part of a create costs (bench/baseline_urls.py).
bench-api-ladder: migrate
	BENCH_LADDER=1 DEBUG=0 SECRET_KEY=bench-only-secret-key $(PY) bench/api_create.py

# Reconciliation of 1,000,000 bill rows against 1,000,000 orders, and the plain SQL baseline (bench/recon.py),
# on a database of its own.
bench-recon: DATABASE_URL = postgres://postgres@$(PGHOST):5432/payments_bench_recon

bench-recon: migrate
	DEBUG=0 SECRET_KEY=bench-only-secret-key SANDBOX_SECRET=bench-sandbox-secret $(PY) bench/recon.py

# Paid orders per second through the whole stack (the Procfile's processes with production settings, the sandbox
# simulator's pay page, merchant webhooks), at zero and 200 ms channel latency, with the ceiling of this machine
# measured in the same run (bench/e2e.py). Its own database (payments_bench_e2e, dropped and made again) and Redis
# db 3, on free ports; it never touches `make run`'s. BENCH_ORDERS, BENCH_CONCURRENCY, BENCH_ROUNDS tune it.
bench-e2e: venv
	$(PY) bench/e2e.py

# Fault drills on the real stack (bench/chaos.py): web, workers, beat, dispatcher and the sandbox simulator on a
# PostgreSQL and a Redis of the drill's own, 1,000 orders per scenario while each fault is injected; prints the table
# and fails on any lost, double-charged or stuck order. `make test` runs its short version (tests/test_chaos.py).
chaos: venv
	$(PY) bench/chaos.py --output bench/results/chaos-$$(date +%F)-$$(nproc)cores.txt

clean:
	rm -rf $(VENV) .dev .pytest_cache .mypy_cache .ruff_cache
