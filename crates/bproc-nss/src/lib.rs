//! `libnss_bproc.so.2`: cluster node names for every program, through the C library's name
//! service switch (Scyld's beonss). With
//!
//! ```text
//! hosts: files bproc dns
//! ```
//!
//! in `/etc/nsswitch.conf`, `ssh n3`, `ping .3`, `getent hosts master` and `getent hosts
//! 10.0.0.13` (answering `n3`) work in any program: `nN` and `.N` are node N, `master` (and
//! `n-1`) the front end, plus the configuration's `nodename` names.
//!
//! The answers come from the node names file bpmaster keeps (`/var/lib/bproc/hosts`, beside
//! its state file; `$BPROC_HOSTS` names another, except in set-user-ID programs). The master
//! replaces it atomically when the configuration changes, so a lookup reads one whole file
//! and never waits for, or even needs, a running master. Without the file the module answers
//! "unavailable" and the next source is asked.
//!
//! # Why not the `libnss` crate
//! It was the kept crate for this ABI, and was looked at first. It writes the pointer arrays
//! of a `hostent` right after the name's bytes, unaligned (undefined behaviour, and a
//! `misaligned pointer dereference` abort in a debug build, inside whatever program resolves
//! a name), can panic across the C boundary (`unwrap` on a poisoned lock, `expect` on a
//! name with a NUL), and is LGPL-3.0 in a GPL-2.0-or-later tree. The ABI needed is three
//! functions; they are here, each unsafe block with its reasons.
//!
//! # Layout
//! - [`hosts`]: the file's format and the lookups, safe and unit-tested.
//! - this file: the exported functions, which check their arguments, look up, and lay the
//!   answer out in the caller's buffer.
#![deny(missing_docs)]
// The C boundary: glibc calls these functions with raw pointers.
#![allow(unsafe_code)]

pub mod hosts;

use std::ffi::{c_char, c_int, c_void, CStr};
use std::net::Ipv4Addr;
use std::panic::{catch_unwind, AssertUnwindSafe};

use nix::libc::{self, hostent, size_t};

/// Where bpmaster writes the names by default (its default `statedir`).
pub const DEFAULT_PATH: &str = "/var/lib/bproc/hosts";

// `enum nss_status` of glibc's <nss.h>.
const NSS_STATUS_TRYAGAIN: c_int = -2;
const NSS_STATUS_UNAVAIL: c_int = -1;
const NSS_STATUS_NOTFOUND: c_int = 0;
const NSS_STATUS_SUCCESS: c_int = 1;
// h_errno values of <netdb.h>.
const HOST_NOT_FOUND: c_int = 1;
const TRY_AGAIN: c_int = 2;
const NO_RECOVERY: c_int = 3;
const NETDB_INTERNAL: c_int = -1;

/// The names file's text, or `None` when it cannot be read.
fn read_file() -> Option<String> {
    // SAFETY: getauxval only reads the auxiliary vector the kernel gave the process; it has
    // no preconditions. AT_SECURE is set in set-user-ID and similar programs, where the
    // environment must not choose the file (glibc's secure_getenv does the same check).
    let secure = unsafe { libc::getauxval(libc::AT_SECURE) } != 0;
    let path = match std::env::var_os("BPROC_HOSTS") {
        Some(p) if !secure => std::path::PathBuf::from(p),
        _ => DEFAULT_PATH.into(),
    };
    std::fs::read_to_string(path).ok()
}

/// What a lookup came to, before it is told to glibc.
enum Outcome {
    Found(hosts::Host),
    NotFound,
    /// No names file: let the next source answer.
    Unavailable,
}

/// Where a `hostent`'s fields were laid out in the caller's buffer: the strings, then the
/// address bytes, then the pointer arrays (at pointer alignment).
struct Layout {
    name: usize,
    aliases: usize,
    addrs: usize,
}

/// A writer of bytes into the caller's buffer, which tracks real addresses for pointers.
struct Buf<'a> {
    bytes: &'a mut [u8],
    base: usize,
    used: usize,
}

impl Buf<'_> {
    fn reserve(&mut self, len: usize, align: usize) -> Option<usize> {
        let pad = (align - (self.base + self.used) % align) % align;
        let start = self.used.checked_add(pad)?;
        let end = start.checked_add(len)?;
        if end > self.bytes.len() {
            return None;
        }
        self.used = end;
        Some(start)
    }
    /// Copies `data` in; returns its address.
    fn put(&mut self, data: &[u8], align: usize) -> Option<usize> {
        let at = self.reserve(data.len(), align)?;
        self.bytes[at..at + data.len()].copy_from_slice(data);
        Some(self.base + at)
    }
    /// A NULL-terminated array of the pointers `ptrs`; returns its address.
    fn pointers(&mut self, ptrs: &[usize]) -> Option<usize> {
        let size = std::mem::size_of::<usize>();
        let at = self.reserve((ptrs.len() + 1) * size, std::mem::align_of::<*mut c_char>())?;
        for (i, p) in ptrs.iter().chain([&0]).enumerate() {
            self.bytes[at + i * size..at + (i + 1) * size].copy_from_slice(&p.to_ne_bytes());
        }
        Some(self.base + at)
    }
    fn string(&mut self, s: &str) -> Option<usize> {
        if s.contains('\0') {
            return None;
        }
        let at = self.reserve(s.len() + 1, 1)?;
        self.bytes[at..at + s.len()].copy_from_slice(s.as_bytes());
        self.bytes[at + s.len()] = 0;
        Some(self.base + at)
    }

    fn host(&mut self, host: &hosts::Host) -> Option<Layout> {
        let name = self.string(&host.name)?;
        let aliases: Vec<usize> =
            host.aliases.iter().map(|a| self.string(a)).collect::<Option<_>>()?;
        let addrs: Vec<usize> =
            host.addrs.iter().map(|a| self.put(&a.octets(), 4)).collect::<Option<_>>()?;
        Some(Layout { name, aliases: self.pointers(&aliases)?, addrs: self.pointers(&addrs)? })
    }
}

/// Tells glibc the outcome: fills `result` from `buf` on success.
///
/// # Safety
/// `result`, `errnop` and `h_errnop` are valid for writes, and `buf` for `buflen` bytes,
/// as glibc guarantees to NSS modules.
unsafe fn answer(
    outcome: Outcome,
    result: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    let host = match outcome {
        Outcome::Found(host) => host,
        Outcome::NotFound => {
            // SAFETY: valid for writes (the caller's contract).
            unsafe { *h_errnop = HOST_NOT_FOUND };
            return NSS_STATUS_NOTFOUND;
        }
        Outcome::Unavailable => {
            // SAFETY: as above.
            unsafe { *h_errnop = NO_RECOVERY };
            return NSS_STATUS_UNAVAIL;
        }
    };
    if buf.is_null() {
        // SAFETY: as above.
        unsafe { *h_errnop = NETDB_INTERNAL };
        return NSS_STATUS_UNAVAIL;
    }
    // SAFETY: glibc hands over `buf` for `buflen` bytes, for this call only, to fill as we
    // like; nothing else reads or writes it until we return.
    let bytes = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), buflen) };
    let mut b = Buf { base: buf as usize, bytes, used: 0 };
    let Some(layout) = b.host(&host) else {
        // Too small: glibc retries with a larger buffer.
        // SAFETY: valid for writes (the caller's contract).
        unsafe {
            *errnop = libc::ERANGE;
            *h_errnop = TRY_AGAIN;
        }
        return NSS_STATUS_TRYAGAIN;
    };
    // SAFETY: `result` is valid for writes; every pointer stored points into `buf`, at the
    // alignment its type needs (`Buf::pointers` aligns the arrays), and outlives the call as
    // glibc keeps `buf` alive with `result`.
    unsafe {
        (*result).h_name = layout.name as *mut c_char;
        (*result).h_aliases = layout.aliases as *mut *mut c_char;
        (*result).h_addrtype = libc::AF_INET;
        (*result).h_length = 4;
        (*result).h_addr_list = layout.addrs as *mut *mut c_char;
    }
    NSS_STATUS_SUCCESS
}

/// Runs a lookup, turning a panic (which must not cross into C) into "unavailable".
fn guarded(f: impl FnOnce() -> Outcome) -> Outcome {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or(Outcome::Unavailable)
}

fn lookup_name(name: &str, af: c_int) -> Outcome {
    if af != libc::AF_INET {
        // Nodes have IPv4 addresses only.
        return Outcome::NotFound;
    }
    match read_file() {
        None => Outcome::Unavailable,
        Some(text) => hosts::by_name(&text, name).map_or(Outcome::NotFound, Outcome::Found),
    }
}

/// `gethostbyname2_r` for the `bproc` source: node names to addresses.
///
/// # Safety
/// glibc's NSS contract: `name` is a NUL-terminated string or NULL, `result`, `errnop` and
/// `h_errnop` are valid for writes, and `buf` for `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn _nss_bproc_gethostbyname2_r(
    name: *const c_char,
    af: c_int,
    result: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    let outcome = if name.is_null() {
        Outcome::NotFound
    } else {
        // SAFETY: non-NULL and NUL-terminated (the caller's contract); read before returning.
        let name = unsafe { CStr::from_ptr(name) };
        match name.to_str() {
            Ok(name) => guarded(|| lookup_name(name, af)),
            Err(_) => Outcome::NotFound,
        }
    };
    // SAFETY: the caller's contract, passed on.
    unsafe { answer(outcome, result, buf, buflen, errnop, h_errnop) }
}

/// `gethostbyname_r` for the `bproc` source: as [`_nss_bproc_gethostbyname2_r`] for IPv4.
///
/// # Safety
/// As [`_nss_bproc_gethostbyname2_r`].
#[no_mangle]
pub unsafe extern "C" fn _nss_bproc_gethostbyname_r(
    name: *const c_char,
    result: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    // SAFETY: the same contract.
    unsafe {
        _nss_bproc_gethostbyname2_r(name, libc::AF_INET, result, buf, buflen, errnop, h_errnop)
    }
}

/// `gethostbyaddr_r` for the `bproc` source: a node's address to its names.
///
/// # Safety
/// glibc's NSS contract: `addr` is valid for `len` bytes (or NULL), `result`, `errnop` and
/// `h_errnop` are valid for writes, and `buf` for `buflen` bytes.
#[no_mangle]
pub unsafe extern "C" fn _nss_bproc_gethostbyaddr_r(
    addr: *const c_void,
    len: libc::socklen_t,
    af: c_int,
    result: *mut hostent,
    buf: *mut c_char,
    buflen: size_t,
    errnop: *mut c_int,
    h_errnop: *mut c_int,
) -> c_int {
    let outcome = if addr.is_null() || af != libc::AF_INET || len != 4 {
        Outcome::NotFound
    } else {
        let mut octets = [0u8; 4];
        // SAFETY: `addr` is valid for `len` = 4 bytes (the caller's contract); an address
        // has no alignment needs when read byte by byte.
        unsafe { std::ptr::copy_nonoverlapping(addr.cast::<u8>(), octets.as_mut_ptr(), 4) };
        let ip = Ipv4Addr::from(octets);
        guarded(|| match read_file() {
            None => Outcome::Unavailable,
            Some(text) => hosts::by_addr(&text, ip).map_or(Outcome::NotFound, Outcome::Found),
        })
    };
    // SAFETY: the caller's contract, passed on.
    unsafe { answer(outcome, result, buf, buflen, errnop, h_errnop) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout glibc reads: every pointer aligned and inside the buffer, arrays
    /// NULL-terminated; a buffer too small asks for a retry.
    #[test]
    fn layout_in_a_buffer() {
        let host = hosts::Host {
            name: "n3".into(),
            aliases: vec![".3".into(), "node3".into()],
            addrs: vec!["10.0.0.13".parse().unwrap(), "10.0.1.13".parse().unwrap()],
        };
        let mut storage = vec![0u64; 64];
        // Start the buffer at an odd address, as a caller may.
        let buf = unsafe_free_offset(&mut storage, 3);
        let mut he: hostent = hostent {
            h_name: std::ptr::null_mut(),
            h_aliases: std::ptr::null_mut(),
            h_addrtype: 0,
            h_length: 0,
            h_addr_list: std::ptr::null_mut(),
        };
        let (mut errno, mut herrno) = (0, 0);
        // SAFETY: every pointer is to live locals; `buf` is valid for 400 bytes.
        let status = unsafe {
            answer(Outcome::Found(host.clone()), &mut he, buf, 400, &mut errno, &mut herrno)
        };
        assert_eq!(status, NSS_STATUS_SUCCESS);
        // SAFETY: `answer` filled `he` with pointers into `storage`, which is alive.
        unsafe {
            assert_eq!(CStr::from_ptr(he.h_name).to_str().unwrap(), "n3");
            assert_eq!(he.h_aliases as usize % std::mem::align_of::<usize>(), 0);
            assert_eq!(CStr::from_ptr(*he.h_aliases).to_str().unwrap(), ".3");
            assert_eq!(CStr::from_ptr(*he.h_aliases.add(1)).to_str().unwrap(), "node3");
            assert!((*he.h_aliases.add(2)).is_null());
            let first = std::slice::from_raw_parts((*he.h_addr_list).cast::<u8>(), 4);
            assert_eq!(first, [10, 0, 0, 13]);
            let second = std::slice::from_raw_parts((*he.h_addr_list.add(1)).cast::<u8>(), 4);
            assert_eq!(second, [10, 0, 1, 13]);
            assert!((*he.h_addr_list.add(2)).is_null());
        }
        assert_eq!((he.h_addrtype, he.h_length), (libc::AF_INET, 4));

        // SAFETY: as above, with a buffer of 20 bytes.
        let status =
            unsafe { answer(Outcome::Found(host), &mut he, buf, 20, &mut errno, &mut herrno) };
        assert_eq!((status, errno, herrno), (NSS_STATUS_TRYAGAIN, libc::ERANGE, TRY_AGAIN));
    }

    fn unsafe_free_offset(storage: &mut [u64], offset: usize) -> *mut c_char {
        storage.as_mut_ptr().cast::<c_char>().wrapping_add(offset)
    }
}
