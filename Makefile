# tfgancompress developer commands.
#
#   make train   set up, then the main job: compress the pretrained vintage teacher
#   make demo    set up, then profile -> slim -> export the bundled pretrained teacher
#   make test    set up, then lint and run the test suite
#   make lint    ruff check + ruff format --check (no set-up)
#   make bazel   set up Bazel (Debian's bazel-bootstrap), then bazel build //...
#
#   make photos  unpack the Debian photo packages (part of every set-up)
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

.PHONY: install system-deps photos photos-extended lint test train demo bazel bazel-setup

# Training photos from Debian packages (tfgancompress/data/catalogue.py names
# the files used), unpacked with `apt-get download` + `dpkg-deb -x`, not
# installed: no dependencies (a scratch install pulls a virtual machine,
# kphotoalbum a desktop), no maintainer scripts, no root needed once apt's
# lists exist. One folder per package under PHOTO_DIR, with its copyright
# file; never committed (several licences are share-alike). ~230 MB download,
# ~300 MB on disk, ~20 s on a fresh machine. Any failure is a note, not an
# error: training then uses the other built-in photos.
PHOTO_PACKAGES := gcompris-qt-data kphotoalbum lomiri-wallpapers-16.04 \
	lxqt-themes palapeli-data plasma-workspace-wallpapers scratch tuxpaint-data
# The extended photo set's extra packages (`--photo_set=extended`; ~390 MB
# download, ~600 MB unpacked): `make photos-extended`, not part of set-up;
# `make train` (the main job, which trains on that set) unpacks them first.
EXTRA_PHOTO_PACKAGES := kalzium-data libjxl-testdata lomiri-wallpapers-20.04 \
	mate-backgrounds stellarium-data
# Keep in step with tfgancompress.data.default_photo_dir().
PHOTO_DIR ?= $(or $(TFGANCOMPRESS_PHOTOS),$(or $(XDG_DATA_HOME),$(HOME)/.local/share)/tfgancompress/photos)

install: system-deps
	$(PIP) install -e ".[test,data]"
	$(PIP) install --no-deps $(VINTAGIFY)

# Optional: Debian's opencv-doc ships ~60 sample photos used by the data tools.
# Installed only where apt-get exists and we are root; any failure is ignored.
system-deps: photos
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

photos:
	@missing=""; \
	for p in $(PHOTO_PACKAGES); do [ -d "$(PHOTO_DIR)/$$p" ] || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then \
		echo "photos: Debian photo packages already unpacked in $(PHOTO_DIR)"; \
	elif ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then \
		echo "note: no apt-get/dpkg-deb here: skipping the Debian photo packages"; \
		echo "      (training uses the other built-in photos):$$missing"; \
	else \
		echo "photos: unpacking$$missing into $(PHOTO_DIR)"; \
		tmp=$$(mkdir -p "$(PHOTO_DIR)" && mktemp -d "$(PHOTO_DIR)/.unpack.XXXXXX") || tmp=""; \
		if [ -z "$$tmp" ]; then \
			echo "note: cannot write to $(PHOTO_DIR); continuing without the photo packages"; \
		elif ( cd "$$tmp" && apt-get download -qq $$missing 2>/dev/null ) || \
		     { [ "$$(id -u)" = 0 ] && $(APT_GET) update -qq && \
		       ( cd "$$tmp" && apt-get download -qq $$missing ); }; then \
			for p in $$missing; do \
				{ dpkg-deb -x "$$tmp/$${p}_"*.deb "$$tmp/$$p" && \
				  mv "$$tmp/$$p" "$(PHOTO_DIR)/$$p"; } || echo "note: could not unpack $$p"; \
			done; \
		else \
			echo "note: could not download$$missing; continuing without them"; \
		fi; \
		[ -z "$$tmp" ] || rm -rf "$$tmp"; \
	fi

photos-extended:
	@$(MAKE) --no-print-directory photos PHOTO_PACKAGES="$(EXTRA_PHOTO_PACKAGES)"

lint:
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

# pytest exits 5 when it collects no tests: that is a failure here, said out loud.
test: install
	$(MAKE) --no-print-directory lint PYTHON="$(PYTHON)"
	@$(PYTHON) -m pytest -q; status=$$?; \
	if [ $$status -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; \
	exit $$status

train: install photos-extended
	$(PYTHON) -m training.train --photo_set=extended --match_steps=1600 --steps=0 \
		--nocolour_skip --detail_skip=2 --dead_leaves=400 --dead_leaves_fov=0.5 \
		--output_dir=outputs/vintage

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
