# Two entry points: `make demo` (the synthetic painting in napari) and `make test`.
# Both set up everything they need on a fresh machine: Debian packages for an X
# server with Mesa OpenGL (napari needs a real GL context), a virtual environment,
# the package and its test extras.

VENV ?= .venv
PY := $(VENV)/bin/python
SYSPKGS := xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 \
	libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
	libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libdbus-1-3 libfontconfig1
# torch/torchvision pairs that import together (torch 2.13.0+cpu cannot import torchvision)
TORCH := torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= demo_out
# run GUI work on a virtual screen unless a display is there already
XRUN := $(if $(DISPLAY),,xvfb-run -a -s "-screen 0 1600x1000x24")

.PHONY: demo test sysdeps venv lint docs-screenshots bench clean

demo: sysdeps venv
	$(XRUN) $(VENV)/bin/nightwatch demo --out $(DEMO_OUT) $(if $(DISPLAY),,--screenshot $(DEMO_OUT)/demo.png)

test: sysdeps venv
	$(XRUN) $(PY) -m pytest -q -p no:cacheprovider

sysdeps:
	@dpkg -s $(SYSPKGS) >/dev/null 2>&1 || { \
	  echo "installing Debian packages for Xvfb + Mesa OpenGL"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $(SYSPKGS) >/dev/null; }

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -e ".[testing]"
	touch $@

lint: venv
	$(VENV)/bin/ruff check src tests benchmarks

docs-screenshots: sysdeps venv
	$(XRUN) $(PY) docs/make_screenshots.py

clean:
	rm -rf $(DEMO_OUT) build dist src/*.egg-info
