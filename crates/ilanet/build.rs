//! Embeds the dashboard's built front end (`ui/dist`, made by `npm ci && npm run build` in `ui/`,
//! which `make setup` runs). A binary without its UI is never built: a missing `ui/dist` fails
//! the build with the command that makes it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let dist = manifest.join("../../ui/dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-env-changed=ILANET_UI_DIST");
    let dist = std::env::var_os("ILANET_UI_DIST").map_or(dist, PathBuf::from);
    if !dist.join("index.html").is_file() {
        println!(
            "cargo::error=the dashboard's front end is not built: {} has no index.html. \
             Run `make setup` (or `cd ui && npm ci && npm run build`) and build again.",
            dist.display()
        );
        return;
    }
    let mut files = Vec::new();
    collect(&dist, &dist, &mut files);
    files.sort();
    let mut out = String::from("/// The built front end: (URL path, bytes, content type).\npub static ASSETS: &[(&str, &[u8], &str)] = &[\n");
    for (rel, abs) in &files {
        println!("cargo:rerun-if-changed={}", abs.display());
        let _ = writeln!(
            out,
            "    ({:?}, include_bytes!({:?}), {:?}),",
            format!("/{rel}"),
            abs.display().to_string(),
            content_type(rel)
        );
    }
    out.push_str("];\n");
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets it"));
    std::fs::write(out_dir.join("ui_assets.rs"), out).expect("writing ui_assets.rs");
}

fn collect(root: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()));
        let path = entry.path();
        if path.is_dir() {
            collect(root, &path, files);
        } else {
            let rel = path
                .strip_prefix(root)
                .expect("under root")
                .to_string_lossy()
                .replace('\\', "/");
            let abs = path.canonicalize().unwrap_or(path);
            files.push((rel, abs));
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("map") => "application/json",
        _ => "application/octet-stream",
    }
}
