//! Gives the shared library BProc 4.0's soname, so programs linked against it ask for
//! `libbproc.so.4`.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libbproc.so.4");
}
