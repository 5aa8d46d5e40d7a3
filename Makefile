# tfgancompress developer commands.
#
#   make train   set up, then the main job: compress the pretrained vintage teacher
#   make demo    set up, then profile -> slim -> export the bundled pretrained teacher
#   make test    set up, then lint and run the test suite
#   make lint    ruff check + ruff format --check (no set-up)
#   make bazel   set up Bazel (Debian's bazel-bootstrap), then bazel build //...
#
# Every set-up step is idempotent: run any target as often as you like.
# Works on a fresh Debian machine with Python 3.10+ and pip; pass another
# interpreter with `make test PYTHON=/path/to/python`.

PYTHON ?= python3
PIP := $(PYTHON) -m pip
# Debian marks its system Python "externally managed"; as root on a fresh
# machine we install into it anyway (no effect inside a virtualenv or pyenv).
export PIP_BREAK_SYSTEM_PACKAGES := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# vintagify ships the pretrained CycleGAN teacher (.pth) we read without torch;
# it declares torch/torchvision as dependencies, hence --no-deps.
VINTAGIFY := vintagify==0.1.2

APT_GET := DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300

.PHONY: install system-deps lint test train demo bazel bazel-setup

install: system-deps
	$(PIP) install -e ".[test,data]"
	$(PIP) install --no-deps $(VINTAGIFY)

# Optional: Debian's opencv-doc ships ~60 sample photos used by the data tools.
# Installed only where apt-get exists and we are root; any failure is ignored.
system-deps:
	@if ! command -v apt-get >/dev/null 2>&1 || [ "$$(id -u)" != 0 ]; then \
		echo "note: skipping optional opencv-doc (needs apt-get as root)"; \
	elif dpkg-query -W -f='$${Status}' opencv-doc 2>/dev/null | grep -q "ok installed"; then \
		echo "opencv-doc: already installed"; \
	else \
		echo "opencv-doc: installing (optional sample photos)"; \
		{ $(APT_GET) update -qq && \
		  $(APT_GET) install -y -qq --no-install-recommends opencv-doc >/dev/null; } \
		|| echo "note: optional opencv-doc could not be installed; continuing"; \
	fi

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# pytest exits 5 when it collects no tests: that is a failure here, said out loud.
test: install
	$(MAKE) --no-print-directory lint PYTHON="$(PYTHON)"
	@$(PYTHON) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$status

train: install
	$(PYTHON) -m training.train --output_dir=outputs/vintage

demo: install
	$(PYTHON) -m tfgancompress.demo

# Debian's bazel-bootstrap (Bazel 4.2) builds the py_library targets offline.
bazel-setup:
	@if command -v bazel >/dev/null 2>&1; then \
		echo "bazel: already installed at $$(command -v bazel)"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		echo "bazel: installing Debian's bazel-bootstrap"; \
		$(APT_GET) update -qq && \
		$(APT_GET) install -y -qq --no-install-recommends bazel-bootstrap >/dev/null; \
	else \
		echo "error: bazel not found; install Debian's bazel-bootstrap (as root)" >&2; \
		exit 1; \
	fi

bazel: bazel-setup
	bazel build //...
