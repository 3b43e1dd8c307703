# Entry points: make (build), make test, make run, make bench. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := all

NGINX_SRC ?= /usr/share/nginx/src
BUILD     := $(CURDIR)/build
MODULE    := $(BUILD)/ngx_http_ratelimit_module.so
NGX_BUILD := $(BUILD)/nginx
CORE_BUILD := $(BUILD)/core
JOBS      ?= $(shell nproc)

# Debian packages the build, the tests and `make run` need.
PACKAGES := nginx nginx-dev libhiredis-dev libev-dev googletest libgtest-dev cmake g++ make \
            redis-server redis-tools python3 python3-pytest curl ca-certificates procps

MODULE_SRCS := $(wildcard core/src/*.cpp core/include/ratelimit/*.h ngx_module/*.cpp ngx_module/*.h)

.PHONY: all deps core module test test-unit test-integration test-e2e run bench clean

all: core module

# Installs what is missing (as root); otherwise says what to install.
deps:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	    if [ "$$(id -u)" = 0 ]; then \
	        echo "installing:" $$missing; \
	        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	    else \
	        echo "missing Debian packages (run as root or install them):" $$missing; exit 1; \
	    fi; \
	fi

core: $(CORE_BUILD)/Makefile
	$(MAKE) -C $(CORE_BUILD) -j$(JOBS) --no-print-directory

$(CORE_BUILD)/Makefile: CMakeLists.txt
	cmake -S . -B $(CORE_BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null

module: $(MODULE)

# The nginx build must be configured again when the list of sources changes.
$(BUILD)/sources.list: FORCE
	@mkdir -p $(BUILD)
	@ls core/src/*.cpp ngx_module/*.cpp > $@.tmp; cmp -s $@.tmp $@ && rm $@.tmp || mv $@.tmp $@

$(NGX_BUILD)/Makefile: config config.make $(BUILD)/sources.list
	cd $(NGINX_SRC) && . ./conf_flags && ./configure \
	    --with-cc-opt="$$(dpkg-buildflags --get CFLAGS) -fPIC $$(dpkg-buildflags --get CPPFLAGS)" \
	    --with-ld-opt="$$(dpkg-buildflags --get LDFLAGS) -fPIC" \
	    "$${NGX_CONF_FLAGS[@]}" --add-dynamic-module=$(CURDIR) --builddir=$(NGX_BUILD) >$(BUILD)/configure.log \
	    || { tail -20 $(BUILD)/configure.log; exit 1; }

$(MODULE): $(NGX_BUILD)/Makefile $(MODULE_SRCS)
	$(MAKE) -f $(NGX_BUILD)/Makefile -C $(NGINX_SRC) modules -j$(JOBS) --no-print-directory
	cp $(NGX_BUILD)/ngx_http_ratelimit_module.so $@

test: deps all
	$(CORE_BUILD)/unit_tests --gtest_brief=1
	$(CORE_BUILD)/integration_tests --gtest_brief=1
	/usr/bin/python3 -m pytest -q tests/e2e

run: deps module
	./conf-examples/run-quickstart.sh

bench: deps module
	./bench/run.sh

clean:
	rm -rf $(BUILD)

FORCE:
