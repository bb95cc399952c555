# Developer entry points. Every target that runs code creates/refreshes .venv first.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp
RTABMAP_MSGS := test/rtabmap_msgs
RTABMAP_MSGS_STAMP := $(VENV)/.rtabmap_msgs
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
# Extra pip arguments for the torch install, e.g. a CPU-only wheel index.
TORCH_PIP_ARGS ?=

# ROS 2 isolation for tests and the demo: discovery stays on this host, and each run
# gets its own domain id (0-101 is the range that cannot collide with Linux ephemeral ports).
ROS_ENV = ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST ROS_DOMAIN_ID=$${VPR_ROS_DOMAIN_ID:-$$((1 + RANDOM % 101))}

.PHONY: venv test colcon demo bench lint clean distclean

venv: $(STAMP) $(RTABMAP_MSGS_STAMP)

$(STAMP): setup.py setup.cfg pyproject.toml
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install $(TORCH_PIP_ARGS) $(TORCH_PINS)
	$(VPY) -m pip install -e '.[dev,ros,train,onnx]'
	touch $@

# rtabmap_msgs (RTAB-Map's ROS 2 interfaces, used by tests) is not on PyPI: its types are generated from
# the vendored interface files and installed into the venv.
$(RTABMAP_MSGS_STAMP): $(STAMP) $(addprefix $(RTABMAP_MSGS)/,build.sh CMakeLists.txt package.xml) \
		$(wildcard $(RTABMAP_MSGS)/msg/*.msg $(RTABMAP_MSGS)/srv/*.srv)
	$(RTABMAP_MSGS)/build.sh $(VENV)
	touch $@

# Every test runs once: pytest runs the suite except COLCON_TESTS, which colcon's test step runs
# against the colcon build (the ROS and packaging tests, where the ament layout matters).
COLCON_TESTS := test/integration/test_package.py test/ros/test_localize_node.py test/test_image_msgs.py
test: venv
	$(ROS_ENV) $(VPY) -m pytest test -q $(addprefix --ignore=,$(COLCON_TESTS))
	$(MAKE) --no-print-directory colcon

# Build and test as a ROS 2 workspace would (colcon from PyPI, in the same venv). The venv has no
# underlay setup files, so colcon's AMENT_PREFIX_PATH underlay lookup (which only warns about
# that) is switched off.
COLCON := AMENT_PREFIX_PATH=$(abspath $(VENV)) COLCON_EXTENSION_BLOCKLIST=colcon_core.prefix_path.ament \
	$(VENV)/bin/colcon --log-base .colcon/log
COLCON_PATHS := --base-paths . --build-base .colcon/build --install-base .colcon/install --packages-select vpr_ros
colcon: venv
	touch $(VENV)/COLCON_IGNORE
	$(COLCON) build $(COLCON_PATHS)
	$(ROS_ENV) $(COLCON) test $(COLCON_PATHS) --return-code-on-test-failure --event-handlers console_direct+ \
		--pytest-args $(COLCON_TESTS)

demo: venv
	$(ROS_ENV) $(VPY) -m vpr_ros.synth.demo

bench: venv
	$(VPY) bench/descriptor.py

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf build install log .colcon demo_out lightning_logs .pytest_cache .ruff_cache *.egg-info
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -print0 | xargs -0 rm -rf

distclean: clean
	rm -rf $(VENV)
