//! Link options of `libsampalloc.so`.

fn main() {
    // Each loadable segment starts on a page of its own. Packed (the linker's default), the
    // writable segments began near the end of a page: the relocated pointers (`.data.rel.ro`,
    // `.got`) straddled two pages and `.data` two more, four pages the loader writes in every
    // process. Page-aligned, they take two; the file grows by under 16 KiB of padding. lld (the
    // default linker of Rust on Linux since 1.90) applies it, GNU ld ignores it with a warning,
    // and gold refuses it, so a build that asks for gold goes without.
    let rustflags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    println!("cargo:rerun-if-env-changed=CARGO_ENCODED_RUSTFLAGS");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") && !rustflags.contains("gold")
    {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,separate-loadable-segments");
        // The code every process runs, gathered just after `.init` (see the script).
        let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
        println!("cargo:rerun-if-changed=hot.ld");
        println!("cargo:rustc-cdylib-link-arg=-Wl,-T,{dir}/hot.ld");
    }
}
