# Two entry points do everything on a fresh machine: `make demo` and `make test`.
# Both run the idempotent set-up first (apt packages, bpffs, cargo build).

CARGO ?= cargo
export CARGO_TERM_COLOR ?= never

.PHONY: setup build demo test lint clean

setup:
	./scripts/setup.sh

build: setup
	$(CARGO) build --release -p ilanet -p cni

## demo: the SC17 demo on the embedded default (needs root: namespaces and eBPF)
demo: build
	./target/release/ilanet demo

## test: formatting, lints, then every test (unit, BPF_PROG_TEST_RUN, namespaces; needs root).
## Without root, `cargo test` runs the pure tests and lists the others as ignored ("needs root: …").
test: setup lint
	@[ "$$(id -u)" -eq 0 ] || { echo "make test needs root (network namespaces, eBPF): sudo make test" >&2; exit 1; }
	$(CARGO) test --workspace -- --include-ignored --test-threads=2

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

clean:
	$(CARGO) clean
