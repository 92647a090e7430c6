//! Compiles the eBPF programs in `bpf/` with clang into OUT_DIR.
//!
//! One file per attach point (`from_container.c`, `from_wire.c`, sharing `lib/*.h`), compiled
//! separately and linked by `bpftool gen object` into one object, so that both programs share
//! the maps (defined weak in `lib/maps.h`, merged by the linker). Two objects come out:
//! `ila.bpf.o` (maps pinned by name, for agents) and `ila_nopin.bpf.o` (`-DILA_NO_PIN`, for tests
//! and benchmarks that must not touch bpffs). A third, `abi_check.bpf.o`, is never loaded: its
//! BTF holds every ABI type for `tests/abi.rs`. A fourth, `baseline.bpf.o`, is the empty program
//! `bench micro` measures as the floor of `BPF_PROG_TEST_RUN`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG_MISSING: &str =
    "clang-19 not found: install it with `apt-get install clang-19 libbpf-dev` (or run `make setup`)";
const BPFTOOL_MISSING: &str =
    "bpftool not found (it links the eBPF objects): install it with `apt-get install bpftool` \
     (or run `make setup`), or point $BPFTOOL at it";

/// The program files, one per attach point, linked into one object.
const PROGRAMS: [&str; 2] = ["from_container", "from_wire"];

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../../bpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=BPFTOOL");
    for dir in [bpf_dir.clone(), bpf_dir.join("lib")] {
        println!("cargo:rerun-if-changed={}", dir.display());
        for entry in
            std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        {
            let path = entry.expect("readable bpf/ entry").path();
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }

    let clang = find_tool("CLANG", &["clang-19", "clang"], "--version")
        .unwrap_or_else(|| panic!("{CLANG_MISSING}"));
    let bpftool = find_tool("BPFTOOL", &["bpftool", "/usr/sbin/bpftool"], "version")
        .unwrap_or_else(|| panic!("{BPFTOOL_MISSING}"));
    let multiarch = multiarch_include();
    for (out, extra) in [("ila", &[][..]), ("ila_nopin", &["-DILA_NO_PIN"][..])] {
        let parts: Vec<PathBuf> = PROGRAMS
            .iter()
            .map(|p| {
                let part = out_dir.join(format!("{out}.{p}.o"));
                let src = bpf_dir.join(format!("{p}.c"));
                compile(&clang, &multiarch, &bpf_dir, &src, &part, extra);
                part
            })
            .collect();
        link(&bpftool, &parts, &out_dir.join(format!("{out}.bpf.o")));
    }
    for name in ["abi_check", "baseline"] {
        compile(
            &clang,
            &multiarch,
            &bpf_dir,
            &bpf_dir.join(format!("{name}.c")),
            &out_dir.join(format!("{name}.bpf.o")),
            &[],
        );
    }
}

/// `$<var>`, else the first of `names` that runs with `probe_arg`.
fn find_tool(var: &str, names: &[&str], probe_arg: &str) -> Option<String> {
    let candidates = env::var(var)
        .ok()
        .into_iter()
        .chain(names.iter().map(|s| s.to_string()));
    for c in candidates {
        let ok = Command::new(&c)
            .arg(probe_arg)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(c);
        }
    }
    None
}

/// `bpftool gen object OUT PARTS...`: libbpf's static linker (maps merged by name, BTF deduplicated).
fn link(bpftool: &str, parts: &[PathBuf], out: &Path) {
    let output = Command::new(bpftool)
        .args(["gen", "object"])
        .arg(out)
        .args(parts)
        .output()
        .unwrap_or_else(|e| panic!("{BPFTOOL_MISSING} ({bpftool}: {e})"));
    if !output.status.success() {
        panic!(
            "{bpftool} gen object {} failed:\n{}{}",
            out.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `/usr/include/<multiarch>`: where Debian keeps `asm/types.h`, which `-target bpf` cannot guess.
fn multiarch_include() -> PathBuf {
    let triple = Command::new("gcc")
        .arg("-print-multiarch")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| format!("{}-linux-gnu", env::consts::ARCH));
    Path::new("/usr/include").join(triple)
}

fn compile(clang: &str, multiarch: &Path, inc: &Path, src: &Path, out: &Path, extra: &[&str]) {
    let output = Command::new(clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-mcpu=v3",
        ])
        .arg(format!("-I{}", multiarch.display()))
        .arg(format!("-I{}", inc.display()))
        .args(extra)
        .arg("-c")
        .arg(src)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("{CLANG_MISSING} ({clang}: {e})"));
    if !output.status.success() {
        panic!(
            "{clang} failed to compile {}:\n{}{}",
            src.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
