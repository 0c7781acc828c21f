# res_astdb_cluster: build, install, test, demo and benchmarks.
#
#   make              build res_astdb_cluster.so (release)
#   make install      install it into Asterisk (see README for the variables)
#   make test         the whole test suite, against the stand-in Asterisk
#   make demo         a local three-node cluster on loopback
#   make bench        benchmarks, printing figures (cluster figure 7 runs redis-server
#                     and redis-benchmark)

CARGO ?= cargo
PROFILE_DIR := target/release
MODULE := res_astdb_cluster.so
# The SIP PUBLISH side (transport = pjsip); loads only where res_pjsip does.
SIP_MODULE := res_astdb_cluster_pjsip.so

# Where Asterisk keeps things; the defaults are those of a source install.
# Debian/Ubuntu packages: ASTMODDIR=/usr/lib/x86_64-linux-gnu/asterisk/modules
DESTDIR ?=
ASTMODDIR ?= $(firstword $(wildcard /usr/lib/asterisk/modules /usr/lib/x86_64-linux-gnu/asterisk/modules /usr/lib64/asterisk/modules) /usr/lib/asterisk/modules)
ASTETCDIR ?= /etc/asterisk
ASTDATADIR ?= /var/lib/asterisk

.PHONY: all module install uninstall test demo bench stand-in clean

all: module

module:
	$(CARGO) build --release
	cp $(PROFILE_DIR)/libres_astdb_cluster.so $(MODULE)
	cp $(PROFILE_DIR)/$(SIP_MODULE) $(SIP_MODULE)

install: module
	install -d $(DESTDIR)$(ASTMODDIR) $(DESTDIR)$(ASTETCDIR) $(DESTDIR)$(ASTDATADIR)/documentation/thirdparty
	install -m 0755 $(MODULE) $(DESTDIR)$(ASTMODDIR)/$(MODULE)
	install -m 0755 $(SIP_MODULE) $(DESTDIR)$(ASTMODDIR)/$(SIP_MODULE)
	install -m 0644 configs/astdb_cluster.conf.sample $(DESTDIR)$(ASTETCDIR)/astdb_cluster.conf.sample
	install -m 0644 configs/pjsip.conf.sample $(DESTDIR)$(ASTETCDIR)/pjsip_astdb_cluster.conf.sample
	install -m 0644 doc/res_astdb_cluster-en_US.xml $(DESTDIR)$(ASTDATADIR)/documentation/thirdparty/res_astdb_cluster-en_US.xml
	@echo "Installed $(MODULE) in $(DESTDIR)$(ASTMODDIR)."
	@echo "Copy $(ASTETCDIR)/astdb_cluster.conf.sample to astdb_cluster.conf, edit it, then:"
	@echo "  asterisk -rx 'module load $(MODULE)'"

uninstall:
	rm -f $(DESTDIR)$(ASTMODDIR)/$(MODULE) $(DESTDIR)$(ASTMODDIR)/$(SIP_MODULE) $(DESTDIR)$(ASTDATADIR)/documentation/thirdparty/res_astdb_cluster-en_US.xml

stand-in:
	$(MAKE) -C asterisk-stubs

test: stand-in
	$(CARGO) test --release

demo: module stand-in
	./scripts/demo.sh

bench:
	$(CARGO) bench

clean:
	$(CARGO) clean
	$(MAKE) -C asterisk-stubs clean
	rm -f $(MODULE) $(SIP_MODULE)
