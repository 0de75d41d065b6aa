//! Link options of `libsampalloc.so`.

fn main() {
    // Each loadable segment starts on a page of its own. Packed (the linker's default), the
    // writable segments began near the end of a page: the relocated pointers (`.data.rel.ro`,
    // `.got`) straddled two pages and `.data` two more, four pages the loader writes in every
    // process. Page-aligned, they take two; the file grows by under 16 KiB of padding.
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-z,separate-loadable-segments");
    }
}
