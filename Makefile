# Build, test and measure the book.  `make help` lists the targets.
#
#   make book                      execute every notebook (cpu, or gpu where CUDA is present)
#                                  and write the HTML book to _build/html
#   make test                      lint + notebook hygiene + unit tests + every notebook in the
#                                  smoke profile + a clean `jupyter-book build -W` + browser check
#   make results PROFILE=cpu [CHAPTERS=01,07] [ARCHIVE=out.tar.gz] [CHECKPOINTS=runs/shared]
#                                  measured numbers into results/<profile>.* (and, with ARCHIVE,
#                                  every output of the run packed into one file; with
#                                  CHECKPOINTS, one kept checkpoint folder for all chapters, so
#                                  that CHAPTERS=02,03,05,07,06 lets 06 load the others' models)
#   make bench                     training images/s of each model family, fit() against a bare
#                                  loop, and the cost of subnormal floats: results/bench-<device>.*
#   make same-numbers [REF=HEAD]   the smoke numbers of this tree equal those of commit REF
#                                  (the check that a refactoring changed no behaviour)
#
# Every target sets up what it needs (virtual environment, MNIST cache, offline web assets)
# and is idempotent: stamp files remember what is already done.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.ONESHELL:
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

# ------------------------------------------------------------------------------ settings
PYTHON ?= $(shell python3.11 -c '' 2>/dev/null && echo python3.11 || echo python3)
VENV ?= .venv
BIN := $(VENV)/bin
# torch goes in first, pinned here (the package leaves it open), and `pip install -e .` keeps
# it.  On the project's machines torch==2.13.0 is a local CPU wheel (an open requirement would
# pull a 3 GB CUDA build).  Elsewhere choose the build, e.g.
#   make venv TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
TORCH ?= torch==2.13.0
# Run profile: empty means the machine decides (gpu where CUDA is present, else cpu).
PROFILE ?=
CHAPTERS ?=
ARCHIVE ?=
REF ?= HEAD

# MNIST cache (nbutils.data reads NBUTILS_DATA); kept inside the checkout unless set outside.
NBUTILS_DATA ?= $(CURDIR)/.cache/data
export NBUTILS_DATA
ifneq ($(strip $(PROFILE)),)
export NBUTILS_PROFILE := $(PROFILE)
endif

# Offline web assets: MathJax, the ipywidgets HTML manager and require.js, served from
# _static/ of the built book (see _config.yml).  Pinned; a new pin refetches.
ASSETS := _assets
MATHJAX_VERSION := 3.2.2
WIDGETS_VERSION := 1.0.15
REQUIREJS_VERSION := 2.3.8

VENV_STAMP := $(VENV)/.stamp
DATA_STAMP := $(NBUTILS_DATA)/mnist.npz
ASSETS_STAMP := $(ASSETS)/.stamp-mathjax-$(MATHJAX_VERSION)-widgets-$(WIDGETS_VERSION)-require-$(REQUIREJS_VERSION)

# `make book` output and its own checkpoints (a clean build retrains).
BOOK_OUT := _build
BOOK_CKPT := $(CURDIR)/$(BOOK_OUT)/.checkpoints
# `make test` builds a separate book in the smoke profile, so its jupyter-cache never mixes
# smoke outputs into the real book.
TEST_OUT := $(BOOK_OUT)/smoke
JB_FLAGS := -W --keep-going

.PHONY: help venv data assets lint hygiene book test browser results bench same-numbers clean distclean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

# ------------------------------------------------------------------------------ set-up
venv: $(VENV_STAMP)  ## virtual environment .venv (CPU torch, then the package with extras)

$(VENV_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# (sed drops pip's notes about unusable local index folders some machines configure)
	$(BIN)/python -m pip install --quiet $(TORCH) 2>&1 | sed "/^WARNING: Location 'file:/d"
	$(BIN)/python -m pip install --quiet -e ".[book,test]" 2>&1 | sed "/^WARNING: Location 'file:/d"
	touch $@

data: $(DATA_STAMP)  ## MNIST cache (python -m nbutils.data fetch)

$(DATA_STAMP): | $(VENV_STAMP)
	$(BIN)/python -m nbutils.data fetch

assets: $(ASSETS_STAMP)  ## offline MathJax, widget manager and require.js in _assets/

$(ASSETS_STAMP):
	@command -v npm >/dev/null || { echo "make assets needs npm (Node.js): apt-get install npm" >&2; exit 1; }
	rm -rf $(ASSETS)
	mkdir -p $(ASSETS)/.npm
	cd $(ASSETS)/.npm
	npm pack --silent mathjax@$(MATHJAX_VERSION) \
	    @jupyter-widgets/html-manager@$(WIDGETS_VERSION) requirejs@$(REQUIREJS_VERSION) >/dev/null
	cd $(CURDIR)/$(ASSETS)
	mkdir mathjax html-manager requirejs
	tar -xzf .npm/mathjax-$(MATHJAX_VERSION).tgz -C mathjax --strip-components=1 \
	    package/es5 package/LICENSE
	tar -xzf .npm/jupyter-widgets-html-manager-$(WIDGETS_VERSION).tgz -C html-manager \
	    --strip-components=1 --wildcards 'package/dist/*' --exclude '*.map' \
	    --exclude 'package/dist/embed.js' --exclude 'package/dist/libembed-amd.js'
	tar -xzf .npm/requirejs-$(REQUIREJS_VERSION).tgz -C requirejs --strip-components=1 \
	    package/require.js
	rm -rf .npm
	# Loaded between require.js and the widget manager (see _config.yml): tells require.js
	# where the manager's modules (and so its icon fonts) live, and routes the MathJax 2 calls
	# with which ipywidgets typesets labels to the book's MathJax 3.
	cat > widgets-setup.js <<'EOF'
	// Written by `make assets`.
	require.config({
	  paths: {
	    "@jupyter-widgets/html-manager/dist":
	      new URL("html-manager/dist", document.currentScript.src).href,
	  },
	});
	window.addEventListener("DOMContentLoaded", () => {
	  const mj = window.MathJax;
	  if (!mj || mj.Hub || !mj.startup) return;
	  mj.Hub = {
	    Queue: (...jobs) => mj.startup.promise.then(() =>
	      mj.typesetPromise(jobs.filter(Array.isArray).map((job) => job[2]).filter(Boolean))),
	  };
	});
	EOF
	touch $(CURDIR)/$@
	echo "offline web assets in $(ASSETS)/: mathjax $(MATHJAX_VERSION)," \
	    "@jupyter-widgets/html-manager $(WIDGETS_VERSION), requirejs $(REQUIREJS_VERSION)"

# ------------------------------------------------------------------------------ checks
lint: $(VENV_STAMP)  ## ruff check + ruff format --check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

hygiene: $(VENV_STAMP)  ## notebooks without outputs, no magics, toc complete
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_hygiene.py

test: $(VENV_STAMP) $(DATA_STAMP) $(ASSETS_STAMP)  ## everything CI checks, in the smoke profile
	@export NBUTILS_PROFILE=smoke PATH="$(CURDIR)/$(BIN):$$PATH"
	NBUTILS_CKPT=$$(mktemp -d -t nbutils-ckpt.XXXXXX)  # train from scratch, every time
	export NBUTILS_CKPT
	trap 'rm -rf "$$NBUTILS_CKPT"' EXIT
	start=$$SECONDS
	step() { printf '\n==== %s (%ss so far)\n' "$$1" "$$((SECONDS - start))"; }
	step "lint"
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	step "notebook hygiene"
	$(BIN)/python -m pytest -q -p no:cacheprovider tests/test_hygiene.py
	step "unit tests + every notebook (pytest --nbval, smoke)"
	$(BIN)/python -m pytest --nbval -p no:cacheprovider -m "not browser" --durations=15
	step "the Colab path: a fresh environment with Colab's packages, pip install from a clone, one notebook"
	NBUTILS_COLAB_TEST=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/test_colab.py
	step "tiny benchmark (python -m nbutils.bench --profile tiny)"
	$(BIN)/python -m nbutils.bench --profile tiny --repeats 1 --steps 3 --out "$$NBUTILS_CKPT/bench"
	step "clean book build (jupyter-book build -W, smoke) into $(TEST_OUT)"
	rm -rf $(TEST_OUT)
	$(BIN)/jupyter-book build . $(JB_FLAGS) --path-output $(TEST_OUT)
	step "browser check of the built book (headless Chromium, offline)"
	NBUTILS_BOOK_HTML=$(TEST_OUT)/_build/html NBUTILS_REQUIRE_BROWSER=1 \
	    $(BIN)/python -m pytest -q -p no:cacheprovider -m browser tests/test_browser.py
	step "make test passed"

browser: $(VENV_STAMP)  ## browser check of _build/html (after make book)
	NBUTILS_REQUIRE_BROWSER=1 $(BIN)/python -m pytest -q -p no:cacheprovider \
	    -m browser tests/test_browser.py

# ------------------------------------------------------------------------------ the book
# jupyter-cache knows only the notebooks' text, so when the run profile or the package's
# source changes since the last build, its cache is emptied and every page rebuilt: the pages
# always show outputs of this profile and this nbutils.  A changed package also drops the
# checkpoints (they may no longer fit its models).
book: $(VENV_STAMP) $(DATA_STAMP) $(ASSETS_STAMP)  ## execute the notebooks, HTML in _build/html
	@export PATH="$(CURDIR)/$(BIN):$$PATH"
	export NBUTILS_CKPT=$(BOOK_CKPT)
	profile=$$($(BIN)/python -c 'from nbutils.runtime import profile; print(profile())')
	code=$$(find nbutils -type f ! -name '*.pyc' | sort | xargs cat | sha256sum | cut -c1-16)
	read -r last_profile last_code < $(BOOK_OUT)/.book-key 2>/dev/null || true
	fresh=""
	if [ "$${last_code:-}" != "$$code" ]; then
	    echo "nbutils changed since the last build: every notebook runs again, from scratch"
	    rm -rf $(BOOK_OUT)/.jupyter_cache $(BOOK_CKPT)
	    fresh=--all
	elif [ "$${last_profile:-}" != "$$profile" ]; then
	    echo "profile changed ($${last_profile:-} -> $$profile): every notebook runs again"
	    rm -rf $(BOOK_OUT)/.jupyter_cache
	    fresh=--all
	fi
	mkdir -p $(BOOK_OUT)
	echo "$$profile $$code" > $(BOOK_OUT)/.book-key
	echo "building the book in the '$$profile' profile (checkpoints in $$NBUTILS_CKPT)"
	$(BIN)/jupyter-book build . $(JB_FLAGS) $$fresh
	echo "the book is in $(BOOK_OUT)/html/index.html"

results: $(VENV_STAMP) $(DATA_STAMP)  ## run notebooks headless, write results/<PROFILE>.json/.md
	@profile="$${NBUTILS_PROFILE:-$$($(BIN)/python -c 'from nbutils.runtime import profile; print(profile())')}"
	$(BIN)/python -m nbutils.results --profile "$$profile" $(if $(CHAPTERS),--chapters $(CHAPTERS)) \
	    $(if $(ARCHIVE),--archive $(ARCHIVE)) $(if $(CHECKPOINTS),--checkpoints $(CHECKPOINTS))

bench: $(VENV_STAMP) $(DATA_STAMP)  ## training throughput per family: results/bench-<device>.*
	@profile=$$($(BIN)/python -c 'import torch; print("gpu" if torch.cuda.is_available() else "cpu")')
	$(BIN)/python -m nbutils.bench --profile "$$profile" --repeats 3 --steps 40 $$( [ "$$profile" = cpu ] && echo --subnormals 2000 )

# Runs every notebook in the smoke profile twice, headless: once from a temporary worktree of
# commit REF (its own nbutils), once from this tree, and compares the report() numbers (wall
# times, unit s, skipped).  On this CPU the smoke runs repeat bit for bit, so any difference is
# a change of behaviour.
SAME := runs/same-numbers
same-numbers: $(VENV_STAMP) $(DATA_STAMP)  ## smoke numbers of this tree == those of REF (HEAD)
	@rm -rf $(SAME)
	mkdir -p $(SAME)
	git worktree add --detach $(SAME)/ref $(REF) >/dev/null
	trap 'git worktree remove --force $(CURDIR)/$(SAME)/ref' EXIT
	commit=$$(git rev-parse --short $(REF))
	echo "==== smoke numbers of $(REF) ($$commit)"
	(cd $(SAME)/ref && NBUTILS_COMMIT=$$commit PYTHONPATH=$$PWD $(CURDIR)/$(BIN)/python \
	    -m nbutils.results --profile smoke --results $(CURDIR)/$(SAME)/ref-results \
	    --runs $(CURDIR)/$(SAME)/ref-runs)
	echo "==== smoke numbers of this tree"
	$(BIN)/python -m nbutils.results --profile smoke --results $(SAME)/results --runs $(SAME)/runs
	$(BIN)/python -m nbutils.results --compare $(SAME)/ref-results/smoke.json \
	    $(SAME)/results/smoke.json

# ------------------------------------------------------------------------------ cleaning
clean:  ## remove build outputs, fetched web assets and tool caches (keeps .venv, data)
	rm -rf _build $(ASSETS) .pytest_cache .ruff_cache runs
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean  ## also remove the virtual environment and the MNIST cache in .cache/
	rm -rf .venv .cache
