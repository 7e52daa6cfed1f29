# The README's commands. `make run` and `make test` create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint clean

# The MQTT tests run a real broker: install Debian's mosquitto unless it is already there
# (on PATH or at /usr/sbin/mosquitto); sudo only when not root. A failure is reported, not fatal:
# only the MQTT tests need it.
setup: $(STAMP)
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then :; \
	elif ! command -v apt-get >/dev/null 2>&1; then \
		echo "make setup: mosquitto is not installed and apt-get is not available; install the mosquitto broker yourself (the MQTT tests need it)" >&2; \
	else \
		if [ "$$(id -u)" = 0 ]; then SUDO=; \
		elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; \
		else SUDO=none; fi; \
		if [ "$$SUDO" = none ]; then \
			echo "make setup: mosquitto is not installed and installing it needs root (no sudo here): run apt-get install -y mosquitto as root (the MQTT tests need it)" >&2; \
		else \
			echo "make setup: installing mosquitto (the MQTT tests need a real broker)"; \
			$$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto \
			|| { $$SUDO apt-get update && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends mosquitto; } \
			|| echo "make setup: could not install mosquitto; run apt-get install -y mosquitto as root (the MQTT tests need it)" >&2; \
		fi; \
	fi

# Reinstall when the dependencies change.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is required (found " + sys.version.split()[0] + "); set PYTHON=python3.11")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

run: setup
	$(BIN)/bot run

test: setup
	$(BIN)/python -m pytest -q -n 2 --durations=15

lint: setup
	$(BIN)/ruff check bot signals strategies tests bench
	$(BIN)/mypy bot signals strategies bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis

# Chaos soak of the real bot (bench/soak.py): 1,000 signals, 10 SIGKILLs, 20 % venue faults.
# SOAK_ARGS passes flags, e.g. `make soak SOAK_ARGS="--signals 200 --kills 3 --seed 7"`.
.PHONY: soak bench bench-stream bench-gate bench-intake bench-typical bench-replay bench-transport
soak: setup
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# Fill at the simulator -> the bot's account projection (bench/stream_latency.py): p50/p99/max
# at 20 fills/s and at 200 fills/s (2,000 fills), beside a bare pybit client's floor.
# STREAM_ARGS passes flags, e.g. `make bench-stream STREAM_ARGS="--fills 4000 --rate 400"`.
bench-stream: setup
	$(BIN)/python -m bench.stream_latency $(STREAM_ARGS)

# The risk gate alone (bench/gate_latency.py): time per decision with 10 strategies, every
# rule on and 100 orders in flight; target p99 under 100 us.
bench-gate: setup
	$(BIN)/python -m bench.gate_latency

# Signal -> order through the real bot (webhook and MQTT) against the floor measured in the same
# run, a 300-signal burst under Bybit's limits, and the footprint (bench/intake.py).
# INTAKE_ARGS passes flags, e.g. `make bench-intake INTAKE_ARGS="--signals 4000 --rate 50"`.
bench-intake: setup
	$(BIN)/python -m bench.intake $(INTAKE_ARGS)

# The common Flask-and-pybit webhook bot beside ours, steady and with the venue stalled
# (bench/typical_bot.py).
bench-typical: setup
	$(BIN)/python -m bench.typical_bot

# Replay speed (bench/replay.py): 1,000 signals with their price points through `bot replay`,
# signals/s and the time against the 30 s target. REPLAY_ARGS passes flags, e.g.
# `make bench-replay REPLAY_ARGS="--signals 100"` (the short form).
bench-replay: setup
	$(BIN)/python -m bench.replay $(REPLAY_ARGS)

# pybit's place_order through requests (the floor) and through the bot's kept-alive session
# (bench/transport.py): CPU and wall time per call against one simulator.
bench-transport: setup
	$(BIN)/python -m bench.transport

bench: soak bench-stream bench-gate bench-intake bench-typical bench-replay bench-transport

# docker/requirements.txt: the image's dependencies (pyproject.toml's), each pinned with the
# hashes of all its files, for Python 3.11 on every platform; the Dockerfile and
# tests/docker install from it with --require-hashes. Rerun after changing a dependency;
# versions already pinned are kept unless UV_ARGS=--upgrade. uv runs from a temporary venv.
UV_VERSION ?= 0.13.9
.PHONY: docker-requirements
docker-requirements:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	$(PYTHON) -m venv "$$tmp/venv" && \
	"$$tmp/venv/bin/python" -m pip install --quiet "uv==$(UV_VERSION)" && \
	"$$tmp/venv/bin/uv" pip compile pyproject.toml --quiet --generate-hashes --universal \
		--python-version 3.11 --custom-compile-command "make docker-requirements" \
		--output-file docker/requirements.txt $(UV_ARGS)
