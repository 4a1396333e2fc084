# Holdfast: `make run` (server with demo data), `make test` (the whole suite), `make check`
# (ruff + mypy strict), `make bench` (benchmarks; prints figures and ratios).
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)
ENVFILE := .holdfast/env

.PHONY: run test check bench bench-sweep bench-scale bench-profile image-check install lock services clean

$(PY):
	python3 -m venv .venv
	$(PIP) install --quiet --upgrade pip

# constraints.txt pins the runtime dependencies (`make lock` moves them): the tests run against
# the versions the image ships
$(STAMP): $(PY) pyproject.toml constraints.txt
	$(PIP) install --quiet --constraint constraints.txt -e '.[dev]'
	rm -f .venv/.installed-*
	touch $(STAMP)

install: $(STAMP)

# resolve the runtime dependencies afresh and pin them in constraints.txt (scripts/lock.sh)
lock:
	scripts/lock.sh

services: install
	@scripts/services.sh

# the sandbox plays the card processor and the bank in a gentle demo mode (one action every 2 s,
# a few duplicated and reordered webhooks); a demo Stripe secret and payment fee show those flows
run: services
	@set -a; [ -f $(ENVFILE) ] && . ./$(ENVFILE); set +a; \
	export HOLDFAST_STRIPE_WEBHOOK_SECRET="$${HOLDFAST_STRIPE_WEBHOOK_SECRET-whsec_dev_stripe_demo}"; \
	export HOLDFAST_PAYMENT_FEES="$${HOLDFAST_PAYMENT_FEES-GBP:20}"; \
	.venv/bin/holdfast migrate --create-db && \
	.venv/bin/holdfast demo && \
	{ .venv/bin/holdfast consumers & consumers=$$!; \
	  .venv/bin/holdfast sandbox --demo --delay-ms 300 --duplicate-rate 0.05 \
	    --reorder-rate 0.05 & sandbox=$$!; \
	  trap 'kill $$consumers $$sandbox 2>/dev/null' EXIT INT TERM; \
	  .venv/bin/holdfast serve; }

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

check: install
	.venv/bin/ruff check .
	.venv/bin/mypy

bench: install
	$(PY) -m benchmarks.run $(BENCH_ARGS)

# the expiry sweep of 1,000,000 expired holds under hot-path load (~5 min, ~1 GB of disk)
bench-sweep: install
	$(PY) -m benchmarks.sweep $(BENCH_ARGS)

# 1,000,000 cards and 10,000,000 authorisations against 10,000 cards (~20 min, ~8 GB of disk)
bench-scale: install
	$(PY) -m benchmarks.scale $(BENCH_ARGS)

# py-spy on the server at saturation, summarised as text (needs: .venv/bin/pip install py-spy)
bench-profile: install
	$(PY) -m benchmarks.profile $(BENCH_ARGS)

# build the Docker image and prove it serves, against this host's PostgreSQL and Redis (needs a
# running Docker daemon; not part of `make test`)
image-check:
	deploy/image-check.sh

clean:
	rm -rf .venv .holdfast .pytest_cache .mypy_cache .ruff_cache
