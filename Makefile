# Two commands set everything up on a fresh machine: `make setup` (or straight `make test`).
SHELL := /bin/bash
VENV := .venv

.PHONY: help setup build test lint format demo clean distclean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup:  ## create .venv with the ML stack, ROS 2 wheels and colcon; build vision_msgs if needed
	@bash scripts/setup.sh

build: setup  ## colcon build (symlinked to the sources): installs tokenmask, segment_node, image_source
	@source scripts/ros_env.sh && colcon --log-base log build --symlink-install --paths . \
		--event-handlers console_cohesion- summary+

test: build  ## make build, then colcon test and colcon test-result --verbose
	@bash scripts/colcon_test.sh

lint: setup  ## ruff over the whole repository (the same check runs under colcon test)
	@$(VENV)/bin/ruff check .

format: setup  ## let ruff fix what it can
	@$(VENV)/bin/ruff check --fix .

demo: setup  ## camera (synthetic, or --source camera:N|folder|video) -> segment_node -> overlays, video, latency table in demo_output/
	@source scripts/ros_env.sh && $(VENV)/bin/python -m tokenmask_ros.ros.demo $(DEMO_ARGS)

clean:  ## remove colcon build products
	rm -rf build install log

distclean: clean  ## also remove the virtual environment and the vision_msgs underlay
	rm -rf $(VENV) .ros_underlay
