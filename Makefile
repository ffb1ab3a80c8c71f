# Both targets bootstrap the project's own virtual environment (.venv) on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl

.PHONY: demo test venv clean xvfb chromium

venv: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/prefrl demo

test: $(STAMP) xvfb chromium
	$(BIN)/lint-imports --no-cache
	$(BIN)/ruff check --quiet prefrl tests scripts
	SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy $(BIN)/python -m pytest -q

# The real-window viewer test needs Xvfb, xdotool and xwd (Debian packages); install them when
# we may (root), otherwise that one test is skipped with a note.
xvfb:
	@if ! command -v Xvfb >/dev/null || ! command -v xdotool >/dev/null || ! command -v xwd >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing xvfb, xdotool and x11-apps (xwd) for the real-window viewer test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xvfb xdotool x11-apps >/dev/null; \
	  else echo "note: Xvfb/xdotool missing and not root: the real-window viewer test will be skipped"; fi; \
	fi

# The report-page test opens the page in Debian's chromium (driven by playwright, which
# downloads no browser of its own); install it when we may (root), otherwise it is skipped.
chromium:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing chromium for the report page test"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else echo "note: chromium missing and not root: the report page test will be skipped"; fi; \
	fi

clean:
	rm -rf $(VENV) runs .pytest_cache
