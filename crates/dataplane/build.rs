//! Compiles the eBPF programs in `bpf/` with clang into OUT_DIR.
//!
//! Two objects come out of the one source: `ila.bpf.o` (maps pinned by name, for agents) and
//! `ila_nopin.bpf.o` (`-DILA_NO_PIN`, for tests and benchmarks that must not touch bpffs).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const CLANG_MISSING: &str =
    "clang-19 not found: install it with `apt-get install clang-19 libbpf-dev` (or run `make setup`)";

fn main() {
    let manifest =
        PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let bpf_dir = manifest.join("../../bpf");
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    for entry in
        std::fs::read_dir(&bpf_dir).unwrap_or_else(|e| panic!("reading {}: {e}", bpf_dir.display()))
    {
        let path = entry.expect("readable bpf/ entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }

    let clang = find_clang().unwrap_or_else(|| panic!("{CLANG_MISSING}"));
    let multiarch = multiarch_include();
    let src = bpf_dir.join("ila.bpf.c");
    compile(
        &clang,
        &multiarch,
        &bpf_dir,
        &src,
        &out_dir.join("ila.bpf.o"),
        &[],
    );
    compile(
        &clang,
        &multiarch,
        &bpf_dir,
        &src,
        &out_dir.join("ila_nopin.bpf.o"),
        &["-DILA_NO_PIN"],
    );
}

/// `$CLANG`, else `clang-19`, else `clang`: the first one that runs.
fn find_clang() -> Option<String> {
    let candidates = env::var("CLANG")
        .ok()
        .into_iter()
        .chain(["clang-19".to_string(), "clang".to_string()]);
    for c in candidates {
        let ok = Command::new(&c)
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Some(c);
        }
    }
    None
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
