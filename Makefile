# pgrun: `make help` lists the targets.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
RUN_STAMP := $(VENV)/.installed-run
ARGS   ?=
PIP    := $(PY) -m pip install --disable-pip-version-check -c constraints.txt
SITE   = $$($(PY) -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")

.DEFAULT_GOAL := help
.PHONY: help install install-all run test test-fast lint format tensorboard sweep clean bench-variance

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

# What CartPole needs (pgrun and its dependencies), then everything else on top of it.
# RUN_IMPORTS: what `make run` imports, Hydra's plugin scan and its lazy imports included (the
# scan warns about pgrun's SLURM launcher, whose extra `make run` does not install: not shown).
RUN_IMPORTS := import warnings; warnings.filterwarnings('ignore', module='hydra.core.plugins'); import pgrun.cli, pgrun.compare, pgrun.trainer, torch.utils.tensorboard, \
	torch.utils.serialization, gymnasium.envs.classic_control, hydra._internal.logging_config, \
	omegaconf._impl, antlr4.LL1Analyzer, tensorboard.plugins.hparams.metadata; \
	from hydra.core.plugins import Plugins; Plugins.instance()
$(RUN_STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || python3 -m venv $(VENV)
	@echo "installing pgrun and what CartPole needs into $(VENV) (make install-all adds the rest)"
	@# Byte-compiling every file of torch is most of an install's time: only what a run imports
	@# is compiled here (also where PYTHONDONTWRITEBYTECODE is set), and all of pgrun's own
	@# files; make install does the rest.
	$(PIP) --progress-bar on --no-compile -e .
	env -u PYTHONDONTWRITEBYTECODE $(PY) -c "$(RUN_IMPORTS)"
	$(PY) -m compileall -q pgrun configs hydra_plugins
	@touch $(RUN_STAMP)

$(STAMP): $(RUN_STAMP) pyproject.toml constraints.txt
	@echo "installing the dev tools, sweep launchers, Box2D, MuJoCo, Atari, video and envpool extras"
	$(PIP) --progress-bar on -e '.[dev,sweep,box2d,mujoco,atari,video,envpool]'
	@echo "compiling the rest of the packages make run installed"
	@$(PY) -m compileall -q -j 0 $(SITE) > /dev/null || true  # a file for another Python: left as source
	@touch $(STAMP)

install: $(STAMP) ## create .venv (if missing) and install pgrun with its dev tools, sweep launchers and every env family

install-all: install ## the same as make install

run: $(RUN_STAMP) ## install only what CartPole needs, then train rtg_baseline on CartPole-v1 (make run ARGS="seed=3")
	$(VENV)/bin/pgrun variant=rtg_baseline env=CartPole-v1 $(ARGS)

test: $(STAMP) ## run the whole test suite, learning tests included (two workers)
	$(PY) -m pytest -q -n 2 --ignore=tests/cluster

test-fast: $(STAMP) ## run the tests without the slow learning tests
	$(PY) -m pytest -q -n 2 -m "not slow" --ignore=tests/cluster

.PHONY: test-cluster
test-cluster: $(STAMP) ## sweeps on a real one-node SLURM started for the tests (root: installs slurm-wlm and munge if missing; a few minutes)
	$(PY) -m pytest -q -n 0 tests/cluster

lint: $(STAMP) ## ruff: lint and format check
	$(VENV)/bin/ruff check pgrun tests
	$(VENV)/bin/ruff format --check pgrun tests

format: $(STAMP) ## ruff: fix lint and format in place
	$(VENV)/bin/ruff check --fix pgrun tests
	$(VENV)/bin/ruff format pgrun tests

sweep: $(RUN_STAMP) ## the four variants x seeds 0,1,2 on CartPole-v1 (a multirun)
	$(VENV)/bin/pgrun -m variant=vanilla,rtg,rtg_baseline,off_policy seed=0,1,2 $(ARGS)

bench-variance: $(STAMP) ## gradient variance and SNR per estimator on CartPole-v1 (docs/estimators.md)
	$(PY) benchmarks/variance.py $(ARGS)

.PHONY: bench-envs
bench-envs: $(STAMP) ## env steps/s: pgrun training vs raw env stepping (CartPole, HalfCheetah, Humanoid)
	$(PY) benchmarks/env_speed.py $(ARGS)

.PHONY: bench-targets
bench-targets: $(STAMP) ## env steps and seconds to each learning target, median over 5 seeds (ARGS="--rows cartpole")
	$(PY) benchmarks/targets.py $(ARGS)

.PHONY: bench-compare
bench-compare: $(STAMP) ## the comparison at a sweep's end, this tree vs a revision, side by side (ARGS="--before main --sweep DIR")
	$(PY) benchmarks/compare_speed.py $(ARGS)

tensorboard: $(RUN_STAMP) ## serve the curves under outputs/ on 127.0.0.1:6006 (ARGS="--logdir <sweep dir>")
	@echo "TensorBoard runs without TensorFlow: its 'TensorFlow installation not found' line is expected"
	$(VENV)/bin/tensorboard --logdir outputs --host 127.0.0.1 --port 6006 $(ARGS)

.PHONY: bench-random
bench-random: $(STAMP) ## a uniform-random policy's return on every env file (env.random_return)
	$(PY) benchmarks/random_returns.py $(ARGS)

BENCH_STAMP := $(VENV)/.bench-installed

$(BENCH_STAMP): $(STAMP) pyproject.toml constraints.txt
	$(PIP) --progress-bar on -e '.[bench]'
	@touch $(BENCH_STAMP)

.PHONY: bench
bench: $(BENCH_STAMP) ## pgrun vs Stable-Baselines3 and the raw env, one table (ARGS="--quick": a short run)
	$(PY) benchmarks/bench.py $(ARGS)

clean: ## remove outputs, caches and the virtual environment
	rm -rf outputs/runs outputs/multirun .pytest_cache .ruff_cache $(VENV) *.egg-info

.PHONY: tensorboard-shots
tensorboard-shots: $(STAMP) ## a small sweep in TensorBoard, rendered by headless Chromium into docs/tensorboard/*.png (installs Debian's chromium if missing)
	$(PY) benchmarks/tensorboard_shots.py $(ARGS)
