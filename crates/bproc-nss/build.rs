//! Gives the module the soname glibc asks for (`libnss_SERVICE.so.2`).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libnss_bproc.so.2");
}
