//! Copies `shaders/*.wgsl` into `OUT_DIR/shaders/` without comments (but the `// #unroll` marks
//! of loops that src/kernel.rs unrolls), blank lines and indentation: the library embeds its shaders' text (the browser build too, where every byte
//! counts), and the comments are for the reader of `shaders/`, not for the GPU.

use std::fs;
use std::path::Path;

/// The WGSL text without `//` comments (WGSL has no string literals, so `//` always starts
/// one), leading and trailing whitespace, or empty lines.
fn strip(text: &str) -> String {
    let mut out = String::with_capacity(text.len() / 2);
    for line in text.lines() {
        let code = line.find("//").map_or(line, |i| &line[..i]).trim();
        if !code.is_empty() {
            out.push_str(code);
            // The one comment kept: a loop's mark for the unrolling (src/kernel.rs `unroll`).
            if line.trim_end().ends_with("// #unroll") {
                out.push_str(" // #unroll");
            }
            out.push('\n');
        }
    }
    out
}

fn main() {
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR for build scripts");
    let out = Path::new(&out_dir).join("shaders");
    fs::create_dir_all(&out).expect("OUT_DIR/shaders can be created");
    println!("cargo:rerun-if-changed=shaders");
    let entries = fs::read_dir("shaders").expect("the shaders/ folder is readable");
    for entry in entries {
        let path = entry.expect("a shaders/ entry is readable").path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            println!("cargo:rerun-if-changed={}", path.display());
            let text = fs::read_to_string(&path).expect("a shader is readable UTF-8");
            let name = path.file_name().expect("a file has a name");
            fs::write(out.join(name), strip(&text)).expect("OUT_DIR is writable");
        }
    }
}
