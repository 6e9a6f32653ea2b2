//! libbproc: BProc 4.0's C API over the `bproc-client` library, built as `libbproc.so.4` and
//! `libbproc.a`, with the headers in `include/sys/`. Old BProc C programs compile against it
//! unchanged for the calls it provides (node information, node sets and specifications,
//! permissions, administration, errors).
//!
//! Every function keeps C's conventions: −1 and `errno` on failure (BProc's `BE_*` values
//! included), never a panic across the boundary (a panic becomes `EIO`), and every pointer is
//! checked for NULL (`EINVAL`). Node sets are allocated with the C library's `malloc`, so C
//! code may free them as BProc's did.
#![allow(unsafe_code)]
#![deny(missing_docs)]

use std::ffi::{c_char, c_int, c_uint, CStr};
use std::panic::{catch_unwind, AssertUnwindSafe};

use bproc_client::errno::{BE_INVALIDNODE, BE_NODEDOWN, EINVAL, EIO};
use bproc_client::{nodespec, Client, NodeAction, NodeStatus, NODE_MASTER};
use nix::libc;

/// Longest node state string.
const STATE_LEN: usize = 15;

/// `struct bproc_node_info_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NodeInfo {
    /// Node number.
    pub node: c_int,
    /// State, NUL-terminated.
    pub status: [c_char; STATE_LEN + 1],
    /// Permission bits.
    pub mode: c_uint,
    /// Owner.
    pub user: c_uint,
    /// Group.
    pub group: c_uint,
    /// Address (`AF_INET`, or all zero while down).
    pub addr: libc::sockaddr,
}

/// `struct bproc_node_set_t`.
#[repr(C)]
pub struct NodeSet {
    /// Entries in use.
    pub size: c_int,
    /// Entries allocated.
    pub alloc: c_int,
    /// The entries (C `malloc`).
    pub node: *mut NodeInfo,
}

const _: () = assert!(std::mem::size_of::<NodeInfo>() == 48);

thread_local! {
    /// The text of this thread's latest failure, for [`bproc_lasterror`].
    static LAST_ERROR: std::cell::RefCell<std::ffi::CString> =
        std::cell::RefCell::new(std::ffi::CString::default());
    /// Whether the call under way has written [`LAST_ERROR`] already.
    static NOTED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Keeps `text` as this thread's latest failure.
fn note(text: String) {
    let text = std::ffi::CString::new(text.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|l| *l.borrow_mut() = text);
    NOTED.with(|n| n.set(true));
}

/// Keeps what `e` says (with its causes, each once) for [`bproc_lasterror`]; its errno.
fn failed(e: bproc_client::BprocError) -> i32 {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    note(text);
    e.errno()
}

/// Runs `f`, turning an error code into −1 with `errno` and a panic into `EIO`; a failure
/// is kept for [`bproc_lasterror`] (the code's text when `f` said nothing more).
fn guard(f: impl FnOnce() -> Result<c_int, i32>) -> c_int {
    NOTED.with(|n| n.set(false));
    let code = match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => return v,
        Ok(Err(e)) => e,
        Err(_) => {
            note("libbproc failed internally (a panic)".into());
            EIO
        }
    };
    if !NOTED.with(|n| n.get()) {
        note(bproc_client::strerror(code));
    }
    nix::errno::Errno::set_raw(code);
    -1
}

/// What this thread's latest failed call said, in words, with its cause: for a move that was
/// refused, what could not move (`cannot move this process: thread 4312 (one of 2
/// threads)...`); otherwise the text of its errno. An empty string before any failure. The
/// string stays valid until the thread's next failing call.
#[no_mangle]
pub extern "C" fn bproc_lasterror() -> *const c_char {
    LAST_ERROR.with(|l| l.borrow().as_ptr())
}

fn client() -> Result<Client, i32> {
    Client::connect().map_err(failed)
}

fn nodes() -> Result<Vec<NodeStatus>, i32> {
    client()?.nodes().map_err(failed)
}

/// One node's entry, asked for alone: a program that asks about each node of a large cluster
/// would otherwise fetch the whole table each time.
fn find(node: c_int) -> Result<NodeStatus, i32> {
    let found = client()?.nodes_of(&[node]).map_err(failed)?;
    found.into_iter().find(|n| n.node == node).ok_or(BE_INVALIDNODE)
}

fn sockaddr(ip: Option<std::net::Ipv4Addr>) -> libc::sockaddr {
    let mut sin: libc::sockaddr_in = libc::sockaddr_in {
        sin_family: 0,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    if let Some(ip) = ip {
        sin.sin_family = libc::AF_INET as libc::sa_family_t;
        sin.sin_addr.s_addr = u32::from(ip).to_be();
    }
    // SAFETY: sockaddr_in and sockaddr are both 16-byte plain-old-data C structures; the
    // socket API defines this reinterpretation.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn info_of(n: &NodeStatus) -> NodeInfo {
    let mut status = [0 as c_char; STATE_LEN + 1];
    for (d, s) in status.iter_mut().zip(n.state.bytes().take(STATE_LEN)) {
        *d = s as c_char;
    }
    NodeInfo {
        node: n.node,
        status,
        mode: n.mode,
        user: n.uid,
        group: n.gid,
        addr: sockaddr(n.addr),
    }
}

/// # Safety
/// `p` is NULL or a NUL-terminated string.
unsafe fn text<'a>(p: *const c_char) -> Result<&'a str, i32> {
    if p.is_null() {
        return Err(EINVAL);
    }
    // SAFETY: non-NULL and NUL-terminated, as the caller promises.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|_| EINVAL)
}

/// Number of configured slave nodes.
#[no_mangle]
pub extern "C" fn bproc_numnodes() -> c_int {
    guard(|| Ok(nodes()?.len() as c_int))
}

/// The node this process runs on; −1 on the front end (and on error, as in BProc).
#[no_mangle]
pub extern "C" fn bproc_currnode() -> c_int {
    match catch_unwind(|| client().and_then(|mut c| c.place().map_err(failed))) {
        Ok(Ok(p)) => p.node,
        _ => NODE_MASTER,
    }
}

/// Copies node `node`'s state into `buf` (NUL-terminated when it fits); returns its length
/// with the NUL.
///
/// # Safety
/// `buf` points to `len` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodestatus(node: c_int, buf: *mut c_char, len: c_int) -> c_int {
    guard(|| {
        if buf.is_null() || len < 0 {
            return Err(EINVAL);
        }
        if node == NODE_MASTER {
            return Err(libc::ENODATA);
        }
        let n = find(node)?;
        let bytes = n.state.as_bytes();
        let len = len as usize;
        let copy = bytes.len().min(len);
        // SAFETY: `buf` holds `len` bytes (the caller's promise) and `copy` ≤ `len`; the NUL
        // is written only when it fits.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), buf, copy);
            if bytes.len() < len {
                *buf.add(bytes.len()) = 0;
            }
        }
        Ok(bytes.len() as c_int + 1)
    })
}

/// Fills `info` for node `node` (also for a down node, whose address is all zero).
///
/// # Safety
/// `info` points to a writable `struct bproc_node_info_t`.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodeinfo(node: c_int, info: *mut NodeInfo) -> c_int {
    guard(|| {
        if info.is_null() {
            return Err(EINVAL);
        }
        let n = find(node)?;
        // SAFETY: non-NULL and writable, as the caller promises.
        unsafe { info.write(info_of(&n)) };
        Ok(0)
    })
}

/// The address of node `node` (the master's with −1).
///
/// # Safety
/// `addr` points to `*size` writable bytes; `size` is a valid pointer.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodeaddr(
    node: c_int,
    addr: *mut libc::sockaddr,
    size: *mut c_int,
) -> c_int {
    guard(|| {
        if addr.is_null() || size.is_null() {
            return Err(EINVAL);
        }
        let ip = if node == NODE_MASTER {
            let info = client()?.master_info().map_err(failed)?;
            info.addrs.iter().find_map(|a| a.ip)
        } else {
            find(node)?.addr
        };
        let ip = ip.ok_or(BE_NODEDOWN)?;
        let sa = sockaddr(Some(ip));
        let n = std::mem::size_of::<libc::sockaddr>();
        // SAFETY: `size` is valid; `addr` holds `*size` bytes and at most that many are written.
        unsafe {
            let room = (*size).max(0) as usize;
            std::ptr::copy_nonoverlapping(
                (&sa as *const libc::sockaddr).cast::<u8>(),
                addr.cast::<u8>(),
                n.min(room),
            );
            *size = n as c_int;
        }
        Ok(0)
    })
}

/// # Safety
/// `ns` points to a node set whose `node` is NULL or from the C library's `malloc`.
unsafe fn grow(ns: *mut NodeSet, want: c_int) -> Result<(), i32> {
    // SAFETY: the caller's promise.
    let ns = unsafe { &mut *ns };
    if want <= ns.alloc {
        return Ok(());
    }
    let alloc = (want + 127) / 128 * 128;
    // SAFETY: `node` is NULL or a malloc'd block; realloc keeps the first `size` entries.
    let p =
        unsafe { libc::realloc(ns.node.cast(), alloc as usize * std::mem::size_of::<NodeInfo>()) };
    if p.is_null() {
        return Err(libc::ENOMEM);
    }
    ns.node = p.cast();
    ns.alloc = alloc;
    Ok(())
}

/// # Safety
/// As for [`grow`].
unsafe fn push(ns: *mut NodeSet, n: NodeInfo) -> Result<(), i32> {
    // SAFETY: the caller's promise; `grow` makes room for one more entry.
    unsafe {
        grow(ns, (*ns).size + 1)?;
        let ns = &mut *ns;
        ns.node.add(ns.size as usize).write(n);
        ns.size += 1;
    }
    Ok(())
}

/// Makes `ns` an empty set with room for `size` entries.
///
/// # Safety
/// `ns` points to a writable node set (its old contents are not freed).
#[no_mangle]
pub unsafe extern "C" fn bproc_nodeset_init(ns: *mut NodeSet, size: c_int) -> c_int {
    guard(|| {
        if ns.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: writable, as the caller promises.
        unsafe { ns.write(NodeSet { size: 0, alloc: 0, node: std::ptr::null_mut() }) };
        if size > 0 {
            // SAFETY: `ns` was just made a valid empty set.
            unsafe { grow(ns, size)? };
            // SAFETY: as above; BProc counts the allocated entries as the size.
            unsafe { (*ns).size = size };
        }
        Ok(0)
    })
}

/// Makes room for `size` entries (a multiple of 128).
///
/// # Safety
/// `ns` points to a node set made by this library or `BPROC_EMPTY_NODESET`.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodeset_grow(ns: *mut NodeSet, size: c_int) -> c_int {
    guard(|| {
        if ns.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: the caller's promise.
        unsafe { grow(ns, size)? };
        Ok(0)
    })
}

/// Appends a copy of `n`.
///
/// # Safety
/// `ns` as for [`bproc_nodeset_grow`]; `n` points to a node entry.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodeset_add(ns: *mut NodeSet, n: *mut NodeInfo) -> c_int {
    guard(|| {
        if ns.is_null() || n.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: the caller's promises.
        unsafe { push(ns, *n)? };
        Ok(0)
    })
}

/// Appends every entry of `b` to `a`.
///
/// # Safety
/// Both point to node sets as for [`bproc_nodeset_grow`].
#[no_mangle]
pub unsafe extern "C" fn bproc_nodeset_append(a: *mut NodeSet, b: *mut NodeSet) -> c_int {
    guard(|| {
        if a.is_null() || b.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: `b` holds `size` valid entries; copied out before `a` may reallocate (a
        // set appended to itself stays valid).
        let entries: Vec<NodeInfo> = unsafe { entries(b) }.to_vec();
        for e in entries {
            // SAFETY: the caller's promise about `a`.
            unsafe { push(a, e)? };
        }
        Ok(0)
    })
}

/// # Safety
/// `ns` points to a valid node set.
unsafe fn entries<'a>(ns: *const NodeSet) -> &'a [NodeInfo] {
    // SAFETY: a valid set holds `size` initialised entries at `node` (or none).
    unsafe {
        let ns = &*ns;
        if ns.node.is_null() || ns.size <= 0 {
            &[]
        } else {
            std::slice::from_raw_parts(ns.node, ns.size as usize)
        }
    }
}

/// Frees a set's entries and empties it.
///
/// # Safety
/// `ns` is NULL or points to a node set as for [`bproc_nodeset_grow`].
#[no_mangle]
pub unsafe extern "C" fn bproc_nodeset_free(ns: *mut NodeSet) {
    if ns.is_null() {
        return;
    }
    // SAFETY: `node` is NULL or malloc'd; the set is left empty so a second free is harmless.
    unsafe {
        libc::free((*ns).node.cast());
        ns.write(NodeSet { size: 0, alloc: 0, node: std::ptr::null_mut() });
    }
}

/// Every configured node, in table order; returns the count.
///
/// # Safety
/// `ns` points to a writable node set (its old contents are not freed).
#[no_mangle]
pub unsafe extern "C" fn bproc_nodelist(ns: *mut NodeSet) -> c_int {
    guard(|| {
        if ns.is_null() {
            return Err(EINVAL);
        }
        let list = nodes()?;
        // SAFETY: writable, as the caller promises; then a valid empty set is filled.
        unsafe {
            ns.write(NodeSet { size: 0, alloc: 0, node: std::ptr::null_mut() });
            for n in &list {
                push(ns, info_of(n))?;
            }
        }
        Ok(list.len() as c_int)
    })
}

fn status_of(n: &NodeInfo) -> NodeStatus {
    let state: Vec<u8> = n.status.iter().take_while(|c| **c != 0).map(|c| *c as u8).collect();
    NodeStatus {
        node: n.node,
        state: String::from_utf8_lossy(&state).into_owned(),
        mode: n.mode,
        uid: n.user,
        gid: n.group,
        addr: None,
        info: None,
    }
}

/// A notifier made by [`bproc_notifier`]: the caller's eventfd `fd`, a duplicate of it of
/// our own (the caller may close its number), and the thread that follows the master for it
/// with the watcher socket `watch`.
struct Notifier {
    fd: c_int,
    own: std::os::fd::OwnedFd,
    watch: c_int,
    thread: std::thread::JoinHandle<()>,
}

/// The notifiers: only their fds are drained by [`bproc_nodelist_`].
static NOTIFIERS: std::sync::Mutex<Vec<Notifier>> = std::sync::Mutex::new(Vec::new());

fn notifiers() -> std::sync::MutexGuard<'static, Vec<Notifier>> {
    NOTIFIERS.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts a thread that makes the eventfd `own` (the caller's `fd`) readable after every
/// change to the node table.
fn follow(fd: c_int, own: std::os::fd::OwnedFd) -> Result<Notifier, c_int> {
    use std::os::fd::{AsFd, AsRawFd};
    let watcher = client()?.watch().map_err(failed)?;
    let watch = watcher.as_fd().as_raw_fd();
    let writer = own.try_clone().map_err(|e| e.raw_os_error().unwrap_or(EIO))?;
    let thread = std::thread::Builder::new()
        .name("bproc-notifier".into())
        .spawn(move || {
            let mut watcher = watcher;
            while watcher.next_table().is_ok() {
                if nix::unistd::write(&writer, &1u64.to_ne_bytes()).is_err() {
                    break;
                }
            }
        })
        .map_err(|e| e.raw_os_error().unwrap_or(EIO))?;
    Ok(Notifier { fd, own, watch, thread })
}

/// Runs `f`, which may move or fork this process, with no notifier thread running: a thread
/// blocked on its watcher would wake on the node with that socket closed there, and read
/// whatever the process opened next under the same number (the reply to its next request).
/// Afterwards the threads start again where the notifiers' fds are still open (the process
/// that stayed, a local child); a process that now runs from its image has none.
fn notifiers_stopped<T>(f: impl FnOnce() -> T) -> T {
    let before = bproc_client::migrate::arrivals();
    let stopped: Vec<(c_int, std::os::fd::OwnedFd)> = notifiers()
        .drain(..)
        .map(|n| {
            // Ends the thread's read with end-of-file; it closes its own fds as it ends.
            let _ = nix::sys::socket::shutdown(n.watch, nix::sys::socket::Shutdown::Read);
            let _ = n.thread.join();
            (n.fd, n.own)
        })
        .collect();
    let result = f();
    if bproc_client::migrate::arrivals() == before {
        // A notifier that cannot follow the master again is dropped, as if the master had
        // gone away: its fd stays open and quiet.
        let again = stopped.into_iter().filter_map(|(fd, own)| follow(fd, own).ok());
        notifiers().extend(again);
    } else {
        // Closed where this process now runs: their numbers may be others' already.
        std::mem::forget(stopped);
    }
    result
}

/// A file descriptor that polls readable (`POLLIN`) after any change to the node table, and
/// at once for the current one; [`bproc_nodelist_`] on it reads the table and clears it. A
/// thread follows the master's changes for it for as long as the master runs.
#[no_mangle]
pub extern "C" fn bproc_notifier() -> c_int {
    use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
    guard(|| {
        let flags =
            nix::sys::eventfd::EfdFlags::EFD_CLOEXEC | nix::sys::eventfd::EfdFlags::EFD_NONBLOCK;
        let ev =
            nix::sys::eventfd::EventFd::from_value_and_flags(0, flags).map_err(|e| e as i32)?;
        let fd = OwnedFd::from(ev);
        let own = fd.try_clone().map_err(|e| e.raw_os_error().unwrap_or(EIO))?;
        let notifier = follow(fd.as_raw_fd(), own)?;
        notifiers().push(notifier);
        Ok(fd.into_raw_fd())
    })
}

/// [`bproc_nodelist`], first clearing the notifier `fd` (from [`bproc_notifier`]).
///
/// # Safety
/// As for [`bproc_nodelist`].
#[no_mangle]
pub unsafe extern "C" fn bproc_nodelist_(ns: *mut NodeSet, fd: c_int) -> c_int {
    if notifiers().iter().any(|n| n.fd == fd) {
        let mut b = [0u8; 8];
        // Non-blocking: nothing to clear is fine.
        let _ = nix::unistd::read(fd, &mut b);
    }
    // SAFETY: the caller's promise.
    unsafe { bproc_nodelist(ns) }
}

/// Puts the entries of `in` that `spec` selects into `out` (reinitialised first).
///
/// # Safety
/// `out` points to a writable node set, `in` to a valid one, `spec` to a C string.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodefilter(
    out: *mut NodeSet,
    input: *mut NodeSet,
    spec: *const c_char,
) -> c_int {
    guard(|| {
        if out.is_null() || input.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: the caller's promises.
        let (spec, all) = unsafe { (text(spec)?, entries(input).to_vec()) };
        let table: Vec<NodeStatus> = all.iter().map(status_of).collect();
        let sel = nodespec::filter(&table, spec).map_err(|_| EINVAL)?;
        // SAFETY: writable, as the caller promises.
        unsafe { out.write(NodeSet { size: 0, alloc: 0, node: std::ptr::null_mut() }) };
        for s in sel.nodes {
            let e = if s.node == NODE_MASTER {
                info_of(&s)
            } else {
                *all.iter().find(|e| e.node == s.node).ok_or(EINVAL)?
            };
            // SAFETY: `out` is a valid set now.
            unsafe { push(out, e)? };
        }
        Ok(0)
    })
}

/// [`bproc_nodelist`] then [`bproc_nodefilter`].
///
/// # Safety
/// As for [`bproc_nodefilter`].
#[no_mangle]
pub unsafe extern "C" fn bproc_nodespec(out: *mut NodeSet, spec: *const c_char) -> c_int {
    let mut all = NodeSet { size: 0, alloc: 0, node: std::ptr::null_mut() };
    // SAFETY: `all` is a local set; `out` and `spec` are the caller's promise.
    unsafe {
        if bproc_nodelist(&mut all) < 0 {
            return -1;
        }
        let r = bproc_nodefilter(out, &mut all, spec);
        bproc_nodeset_free(&mut all);
        r
    }
}

fn call(f: impl FnOnce(&mut Client) -> Result<(), bproc_client::BprocError>) -> c_int {
    guard(|| {
        let mut c = client()?;
        f(&mut c).map_err(failed)?;
        Ok(0)
    })
}

/// Sets node `node`'s mode (execute bits only).
#[no_mangle]
pub extern "C" fn bproc_chmod(node: c_int, mode: c_int) -> c_int {
    call(|c| c.chmod(node, mode as u32))
}

/// Sets node `node`'s owner (root only).
#[no_mangle]
pub extern "C" fn bproc_chown(node: c_int, user: c_int) -> c_int {
    call(|c| c.chown(node, user as u32))
}

/// Sets node `node`'s group.
#[no_mangle]
pub extern "C" fn bproc_chgrp(node: c_int, group: c_int) -> c_int {
    call(|c| c.chgrp(node, group as u32))
}

/// Whether the real user may run on node `node` (`BPROC_X_OK`): 0, or −1 with `EPERM`
/// (also for a down node, as in BProc) or `BE_INVALIDNODE`.
#[no_mangle]
pub extern "C" fn bproc_access(node: c_int, mode: c_int) -> c_int {
    guard(|| {
        if mode & !1 != 0 {
            return Err(EINVAL);
        }
        if node == NODE_MASTER {
            return Ok(0);
        }
        let n = find(node)?;
        if mode == 0 {
            return Ok(0);
        }
        let uid = nix::unistd::getuid().as_raw();
        let gid = nix::unistd::getgid().as_raw();
        let in_group = gid == n.gid
            || nix::unistd::getgroups().is_ok_and(|g| g.iter().any(|g| g.as_raw() == n.gid));
        let bit = if uid == 0 {
            0o111
        } else if uid == n.uid {
            0o100
        } else if in_group {
            0o010
        } else {
            0o001
        };
        if n.state == "down" || n.mode & bit == 0 {
            return Err(libc::EPERM);
        }
        Ok(0)
    })
}

/// Sets node `node`'s state string (root only).
///
/// # Safety
/// `state` points to a C string.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodesetstatus(node: c_int, state: *mut c_char) -> c_int {
    // SAFETY: the caller's promise.
    let state = match unsafe { text(state) } {
        Ok(s) => s.to_owned(),
        Err(e) => return guard(|| Err(e)),
    };
    call(|c| c.set_state(node, &state))
}

/// Makes node `node`'s slave daemon `chroot(path)` (root only).
///
/// # Safety
/// `path` points to a C string.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodechroot(node: c_int, path: *mut c_char) -> c_int {
    // SAFETY: the caller's promise.
    let path = match unsafe { text(path) } {
        Ok(s) => s.to_owned(),
        Err(e) => return guard(|| Err(e)),
    };
    call(|c| c.node_chroot(node, &path))
}

/// An endpoint from a C address: IPv4 only; `0.0.0.0` and port 0 keep what is in use.
///
/// # Safety
/// `addr` is NULL or points at `size` readable bytes.
unsafe fn endpoint(
    addr: *const libc::sockaddr,
    size: c_int,
) -> Result<bproc_client::Endpoint, i32> {
    if addr.is_null() {
        return Ok(bproc_client::Endpoint::default());
    }
    if usize::try_from(size).map_or(true, |s| s < std::mem::size_of::<libc::sockaddr_in>()) {
        return Err(EINVAL);
    }
    // SAFETY: at least a sockaddr_in's bytes are readable, as the caller promises; the read
    // is unaligned-safe.
    let a = unsafe { std::ptr::read_unaligned(addr.cast::<libc::sockaddr_in>()) };
    if c_int::from(a.sin_family) != libc::AF_INET {
        return Err(EINVAL);
    }
    let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
    Ok(bproc_client::Endpoint {
        ip: (!ip.is_unspecified()).then_some(ip),
        port: u16::from_be(a.sin_port),
    })
}

/// Makes node `node`'s slave open a new connection to the master at `rem` (from its own
/// address `loc`, which may be NULL) and move its session there (root only; IPv4 only).
///
/// # Safety
/// `rem` and `loc` are NULL or point at `remsize` and `locsize` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn bproc_nodereconnect(
    node: c_int,
    rem: *const libc::sockaddr,
    remsize: c_int,
    loc: *const libc::sockaddr,
    locsize: c_int,
) -> c_int {
    // SAFETY: as the caller promises.
    let ends = unsafe { endpoint(rem, remsize).and_then(|r| Ok((r, endpoint(loc, locsize)?))) };
    match ends {
        Ok((master, local)) => call(|c| c.node_reconnect(node, master, local)),
        Err(e) => guard(|| Err(e)),
    }
}

/// Reads attribute `name` of node `node` into `value` (`size` bytes; with `size` 0 only the
/// length is returned). Returns the value's length; `ERANGE` when it does not fit, `ENODATA`
/// when the node has no such attribute. Names: `state`, `addr` (dotted IPv4) and those set
/// with [`bproc_setnodeattr`].
///
/// # Safety
/// `name` is a string; `value` is NULL or holds `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn bproc_getnodeattr(
    node: c_int,
    name: *const c_char,
    value: *mut std::ffi::c_void,
    size: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: as the caller promises.
        let name = unsafe { text(name) }?;
        let v = client()?.node_attr(node, name).map_err(failed)?;
        let size = usize::try_from(size).map_err(|_| EINVAL)?;
        if size > 0 {
            if v.len() > size {
                return Err(libc::ERANGE);
            }
            if value.is_null() {
                return Err(EINVAL);
            }
            // SAFETY: `value` holds `size` ≥ `v.len()` writable bytes.
            unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), value.cast::<u8>(), v.len()) };
        }
        Ok(v.len() as c_int)
    })
}

/// Sets attribute `name` of node `node` to `size` bytes at `value` (root only, while the node
/// is up; it keeps the attribute until it goes down). Size 0 removes it; `state` sets the
/// node's state; `addr` is read-only.
///
/// # Safety
/// `name` is a string; `value` is NULL or holds `size` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn bproc_setnodeattr(
    node: c_int,
    name: *const c_char,
    value: *const std::ffi::c_void,
    size: c_int,
) -> c_int {
    let args = || -> Result<(String, Vec<u8>), i32> {
        // SAFETY: as the caller promises.
        let name = unsafe { text(name) }?.to_owned();
        let size = usize::try_from(size).map_err(|_| EINVAL)?;
        if size > bproc_client::MAX_ATTR_VALUE {
            return Err(libc::E2BIG);
        }
        if size == 0 {
            return Ok((name, Vec::new()));
        }
        if value.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: `value` holds `size` readable bytes.
        Ok((name, unsafe { std::slice::from_raw_parts(value.cast::<u8>(), size) }.to_vec()))
    };
    match args() {
        Ok((name, v)) => call(|c| c.set_node_attr(node, &name, &v)),
        Err(e) => guard(|| Err(e)),
    }
}

/// `struct bproc_version_t`.
#[repr(C)]
pub struct Version {
    /// `'B', 'P', 'r'`.
    pub bproc_magic: [c_char; 3],
    /// The machine, as an ELF `e_machine` value (62: x86-64).
    pub arch: u8,
    /// The wire protocol's version.
    pub magic: u32,
    /// The master's version, NUL-terminated.
    pub version_string: [c_char; 24],
}

const _: () = assert!(std::mem::size_of::<Version>() == 32);

/// Fills `v` with the version of the bproc the caller talks to: the master's software
/// version (BProc reported its kernel module's).
///
/// # Safety
/// `v` is NULL or points at a writable `struct bproc_version_t`.
#[no_mangle]
pub unsafe extern "C" fn bproc_version(v: *mut Version) -> c_int {
    guard(|| {
        if v.is_null() {
            return Err(EINVAL);
        }
        let version = client()?.master_version().map_err(failed)?;
        let mut text = [0 as c_char; 24];
        for (d, b) in text.iter_mut().zip(version.bytes().take(23)) {
            *d = b as c_char;
        }
        let arch = if cfg!(target_arch = "x86_64") {
            62
        } else if cfg!(target_arch = "aarch64") {
            183
        } else {
            0
        };
        let out = Version {
            bproc_magic: [b'B' as c_char, b'P' as c_char, b'r' as c_char],
            arch,
            magic: u32::from(bproc_client::PROTOCOL_VERSION),
            version_string: text,
        };
        // SAFETY: `v` is a valid, writable pointer (checked for NULL above).
        unsafe { v.write(out) };
        Ok(0)
    })
}

/// Reboots node `node` (root only; does not wait).
#[no_mangle]
pub extern "C" fn bproc_nodereboot(node: c_int) -> c_int {
    call(|c| c.node_action(node, NodeAction::Reboot))
}

/// Halts node `node` (root only; does not wait).
#[no_mangle]
pub extern "C" fn bproc_nodehalt(node: c_int) -> c_int {
    call(|c| c.node_action(node, NodeAction::Halt))
}

/// Powers node `node` off (root only; does not wait).
#[no_mangle]
pub extern "C" fn bproc_nodepwroff(node: c_int) -> c_int {
    call(|c| c.node_action(node, NodeAction::Poweroff))
}

/// `BPROC_NODE_ANY`.
const BPROC_NODE_ANY: c_int = -4;

/// Flushes every C stdio stream and Rust's stdout: buffered output would otherwise be
/// written again by the moved or restored copy.
fn flush_all() {
    // SAFETY: fflush(NULL) flushes every C stdio stream.
    unsafe { libc::fflush(std::ptr::null_mut()) };
    let _ = std::io::Write::flush(&mut std::io::stdout());
}

/// Moves the caller to `node` (`BPROC_NODE_MASTER`: the front end): 0 on the new node, as
/// the same pid; 0 also when it already runs there, as in BProc. On failure the caller stays
/// where it was: `EBUSY` for what cannot move (a thread that blocks the signal that holds
/// threads for the dump), `BE_NODEDOWN`, `EPERM`...,
/// with the reason in [`bproc_lasterror`]. Fds 3 and up that cannot be opened again by path
/// (pipes, sockets, terminals...) are closed on the node, and shared memory becomes private,
/// as in BProc.
#[no_mangle]
pub extern "C" fn bproc_move(node: c_int) -> c_int {
    // SAFETY: no I/O list.
    unsafe { bproc_move_io(node, std::ptr::null(), -1) }
}

/// [`bproc_move`] with BProc's flags argument: `BPROC_MOVE_STRICT` refuses (`EBUSY`, the
/// reason in [`bproc_lasterror`]) fds that would be closed and shared memory that would
/// become private; the `BPROC_DUMP_*` bits are decided by this implementation itself
/// (libraries and files the node has by reference, the rest by content).
#[no_mangle]
pub extern "C" fn _bproc_move(node: c_int, flags: c_int) -> c_int {
    // SAFETY: no I/O list.
    unsafe { _bproc_move_io(node, std::ptr::null(), -1, flags) }
}

/// [`bproc_move`] with an I/O list for the moved process (`iolen` −1: stdout and stderr
/// relayed by the ghost, stdin `/dev/null`; 0: no fds at all).
///
/// # Safety
/// `io` holds `iolen` entries.
#[no_mangle]
pub unsafe extern "C" fn bproc_move_io(node: c_int, io: *const Io, iolen: c_int) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { _bproc_move_io(node, io, iolen, 0) }
}

/// [`bproc_move_io`] with BProc's flags argument.
///
/// # Safety
/// As for [`bproc_move_io`].
#[no_mangle]
pub unsafe extern "C" fn _bproc_move_io(
    node: c_int,
    io: *const Io,
    iolen: c_int,
    flags: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: as the caller promises.
        let io = unsafe { io_list(io, iolen) }?;
        flush_all();
        notifiers_stopped(|| bproc_client::migrate::move_with(node, &io, flags)).map_err(failed)?;
        Ok(0)
    })
}

/// A fork whose child runs on `node`: the child's pid in the parent (its ghost's: `waitpid`
/// gives the child's status), 0 in the child. A failure on the node is returned as the
/// negated error itself (`-BE_NODEDOWN`), as in BProc; -1 with `errno` for the rest.
#[no_mangle]
pub extern "C" fn bproc_rfork(node: c_int) -> c_int {
    // SAFETY: no I/O list.
    unsafe { bproc_rfork_io(node, std::ptr::null(), -1) }
}

/// [`bproc_rfork`] with BProc's flags argument.
#[no_mangle]
pub extern "C" fn _bproc_rfork(node: c_int, flags: c_int) -> c_int {
    // SAFETY: no I/O list.
    unsafe { _bproc_rfork_io(node, std::ptr::null(), -1, flags) }
}

/// [`bproc_rfork`] with an I/O list for the child.
///
/// # Safety
/// `io` holds `iolen` entries.
#[no_mangle]
pub unsafe extern "C" fn bproc_rfork_io(node: c_int, io: *const Io, iolen: c_int) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { _bproc_rfork_io(node, io, iolen, 0) }
}

/// [`bproc_rfork_io`] with BProc's flags argument.
///
/// # Safety
/// As for [`bproc_rfork_io`].
#[no_mangle]
pub unsafe extern "C" fn _bproc_rfork_io(
    node: c_int,
    io: *const Io,
    iolen: c_int,
    flags: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: as the caller promises.
        let io = unsafe { io_list(io, iolen) }?;
        flush_all();
        notifiers_stopped(|| bproc_client::migrate::rfork_with(node, &io, flags)).map_err(failed)
    })
}

/// One child on each of `nodes[0..n]`: `n` in the parent, with each child's pid (or negated
/// error) in `pids`; its index in each child. Every child is a direct child of the caller.
///
/// # Safety
/// `nodes` and `pids` hold `n` entries.
#[no_mangle]
pub unsafe extern "C" fn bproc_vrfork(n: c_int, nodes: *const c_int, pids: *mut c_int) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { bproc_vrfork_io(n, nodes, pids, std::ptr::null(), -1) }
}

/// [`bproc_vrfork`] with BProc's flags argument (`BPROC_MOVE_STRICT` counts).
///
/// # Safety
/// As for [`bproc_vrfork`].
#[no_mangle]
pub unsafe extern "C" fn _bproc_vrfork(
    n: c_int,
    nodes: *const c_int,
    pids: *mut c_int,
    flags: c_int,
) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { _bproc_vrfork_io(n, nodes, pids, std::ptr::null(), -1, flags) }
}

/// [`bproc_vrfork`] with an I/O list for every child.
///
/// # Safety
/// `nodes` and `pids` hold `n` entries, `io` holds `iolen`.
#[no_mangle]
pub unsafe extern "C" fn bproc_vrfork_io(
    n: c_int,
    nodes: *const c_int,
    pids: *mut c_int,
    io: *const Io,
    iolen: c_int,
) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { _bproc_vrfork_io(n, nodes, pids, io, iolen, 0) }
}

/// [`bproc_vrfork_io`] with BProc's flags argument (`BPROC_MOVE_STRICT` counts).
///
/// # Safety
/// As for [`bproc_vrfork_io`].
#[no_mangle]
pub unsafe extern "C" fn _bproc_vrfork_io(
    n: c_int,
    nodes: *const c_int,
    pids: *mut c_int,
    io: *const Io,
    iolen: c_int,
    flags: c_int,
) -> c_int {
    guard(|| {
        if n <= 0 || nodes.is_null() || pids.is_null() {
            return Err(libc::EINVAL);
        }
        // SAFETY: as the caller promises.
        let io = unsafe { io_list(io, iolen) }?;
        // SAFETY: `nodes` holds `n` entries.
        let list = unsafe { std::slice::from_raw_parts(nodes, n as usize) }.to_vec();
        flush_all();
        match notifiers_stopped(|| bproc_client::migrate::vrfork_with(&list, &io, flags))
            .map_err(failed)?
        {
            bproc_client::migrate::Forked::Child(rank) => Ok(rank as c_int),
            bproc_client::migrate::Forked::Parent(got) => {
                // SAFETY: `pids` holds `n` entries, and `got` has one per node.
                unsafe { std::ptr::copy_nonoverlapping(got.as_ptr(), pids, got.len()) };
                Ok(n)
            }
        }
    })
}

/// `argv` or `envp`: a NULL-terminated array of strings (NULL: empty).
///
/// # Safety
/// `p` is NULL or points at an array of NUL-terminated strings ended by NULL.
unsafe fn strings(p: *const *const c_char) -> Result<Vec<String>, i32> {
    let mut out = Vec::new();
    if p.is_null() {
        return Ok(out);
    }
    for i in 0.. {
        // SAFETY: the array is NULL-terminated, so every index up to the NULL is valid.
        let s = unsafe { *p.add(i) };
        if s.is_null() {
            break;
        }
        // SAFETY: each entry is a NUL-terminated string, as the caller promises.
        out.push(unsafe { CStr::from_ptr(s) }.to_string_lossy().into_owned());
    }
    Ok(out)
}

/// # Safety
/// As for [`strings`], and `cmd` is a NUL-terminated string; `io` as for [`io_list`].
unsafe fn program(
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
    io: *const Io,
    iolen: c_int,
) -> Result<bproc_client::launch::Program, i32> {
    // SAFETY: as the caller promises.
    let path = unsafe { text(cmd) }?.to_owned();
    // SAFETY: as the caller promises.
    let (argv, env, io) = unsafe { (strings(argv)?, strings(envp)?, io_list(io, iolen)?) };
    Ok(bproc_client::launch::Program { path, argv, env, io })
}

/// `BPROC_IO_FILE`.
const IO_FILE: i16 = 0;
/// `BPROC_IO_SOCKET`.
const IO_SOCKET: i16 = 1;
/// `BPROC_IO_MEMFILE`, internal to BProc.
const IO_MEMFILE: i16 = 2;
/// `BPROC_IO_SEND_INFO`.
const IO_SEND_INFO: i16 = 1;
/// `BPROC_IO_DELAY`.
const IO_DELAY: i16 = 2;

/// The file half of `struct bproc_io_t`'s union.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoFile {
    /// `open(2)` flags.
    pub flags: c_int,
    /// Mode of a created file.
    pub mode: c_int,
    /// Where to seek to after opening.
    pub offset: std::ffi::c_long,
    /// Path on the node, NUL-terminated.
    pub name: [c_char; 256],
}

/// `struct bproc_io_t`'s union.
#[repr(C)]
#[derive(Clone, Copy)]
pub union IoTarget {
    /// For `BPROC_IO_SOCKET`.
    pub addr: libc::sockaddr,
    /// For `BPROC_IO_FILE`.
    pub file: IoFile,
}

/// `struct bproc_io_t`: what one fd of a placed process is.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Io {
    /// The fd.
    pub fd: c_int,
    /// `BPROC_IO_FILE` or `BPROC_IO_SOCKET`.
    pub kind: std::ffi::c_short,
    /// `BPROC_IO_SEND_INFO`, `BPROC_IO_DELAY`.
    pub flags: std::ffi::c_short,
    /// The file or address.
    pub d: IoTarget,
}

const _: () = assert!(std::mem::size_of::<Io>() == 280);

/// An I/O list from C: `iolen` −1 for the default (`/dev/null` as stdio), 0 for no fds,
/// else `io[0..iolen]` (at most `BPROC_IO_MAX_LEN`).
///
/// # Safety
/// With `iolen` > 0, `io` is NULL or points at `iolen` entries.
unsafe fn io_list(io: *const Io, iolen: c_int) -> Result<bproc_client::launch::IoList, i32> {
    use bproc_client::launch::IoList;
    use bproc_client::{FdIo, IoSpec};
    if iolen == -1 {
        return Ok(IoList::Default);
    }
    let Ok(n) = usize::try_from(iolen) else { return Err(EINVAL) };
    if n > bproc_client::MAX_FD_IO || (n > 0 && io.is_null()) {
        return Err(EINVAL);
    }
    let entries = if n == 0 {
        &[][..]
    } else {
        // SAFETY: `io` holds `n` entries, as the caller promises.
        unsafe { std::slice::from_raw_parts(io, n) }
    };
    let mut out = Vec::with_capacity(n);
    for e in entries {
        let spec = match e.kind {
            IO_FILE => {
                // SAFETY: the caller filled the union's file half for a FILE entry.
                let f = unsafe { e.d.file };
                let name = f.name.iter().position(|c| *c == 0).ok_or(EINVAL)?;
                let bytes: Vec<u8> = f.name[..name].iter().map(|c| *c as u8).collect();
                IoSpec::Open {
                    path: String::from_utf8(bytes).map_err(|_| EINVAL)?,
                    flags: f.flags,
                    mode: f.mode as u32,
                    offset: f.offset,
                }
            }
            IO_SOCKET => {
                // SAFETY: the caller filled the union's address half for a SOCKET entry;
                // sockaddr and sockaddr_in are the same size.
                let a =
                    unsafe { std::mem::transmute::<libc::sockaddr, libc::sockaddr_in>(e.d.addr) };
                if c_int::from(a.sin_family) != libc::AF_INET {
                    return Err(EINVAL);
                }
                let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                IoSpec::Connect {
                    ip: (!ip.is_unspecified()).then_some(ip),
                    port: u16::from_be(a.sin_port),
                    send_info: e.flags & IO_SEND_INFO != 0,
                }
            }
            IO_MEMFILE => return Err(libc::EPERM),
            _ => return Err(EINVAL),
        };
        if !(0..=bproc_client::MAX_FD).contains(&e.fd) {
            return Err(EINVAL);
        }
        out.push(FdIo { fd: e.fd, io: spec, optional: e.flags & IO_DELAY != 0 });
    }
    Ok(IoList::Exactly(out))
}

/// Runs `cmd` on `node` in place of the caller, which becomes its ghost (same pid and
/// parent): `wait` on the caller gives the remote status. No return on success. The program
/// comes from the node's filesystem (see [`bproc_rexec`]).
///
/// # Safety
/// `cmd` is a string; `argv` and `envp` are NULL-terminated string arrays.
#[no_mangle]
pub unsafe extern "C" fn bproc_execmove(
    node: c_int,
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: as the caller promises; no I/O list.
    unsafe { bproc_execmove_io(node, std::ptr::null(), -1, cmd, argv, envp) }
}

/// [`bproc_execmove`] with an I/O list (`iolen` −1: the default, stdout and stderr relayed
/// to the caller's by its ghost, stdin `/dev/null`; 0: no fds at all).
///
/// # Safety
/// As for [`bproc_execmove`], and `io` holds `iolen` entries.
#[no_mangle]
pub unsafe extern "C" fn bproc_execmove_io(
    node: c_int,
    io: *const Io,
    iolen: c_int,
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    guard(|| {
        // SAFETY: as the caller promises.
        let prog = unsafe { program(cmd, argv, envp, io, iolen) }?;
        Err(failed(bproc_client::launch::execmove(node, &prog)))
    })
}

/// The caller turns into the ghost of `cmd` run on `node` from the node's own filesystem.
/// No return on success.
///
/// # Safety
/// As for [`bproc_execmove`].
#[no_mangle]
pub unsafe extern "C" fn bproc_rexec(
    node: c_int,
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { bproc_execmove(node, cmd, argv, envp) }
}

/// [`bproc_rexec`] with an I/O list.
///
/// # Safety
/// As for [`bproc_execmove_io`].
#[no_mangle]
pub unsafe extern "C" fn bproc_rexec_io(
    node: c_int,
    io: *const Io,
    iolen: c_int,
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: as the caller promises.
    unsafe { bproc_execmove_io(node, io, iolen, cmd, argv, envp) }
}

/// Starts `cmd` once on each of `nodes[0..n]`. Returns `n`; `pids[i]` is the child's pid (a
/// ghost on the front end for a remote process, so `waitpid` gives its status) or the
/// negated error for that node (`-BE_NODEDOWN`...). `BPROC_RANK=XXXXXXX` in `envp` becomes
/// each child's rank.
///
/// # Safety
/// `nodes` and `pids` hold `n` ints; the rest as for [`bproc_execmove`].
#[no_mangle]
pub unsafe extern "C" fn bproc_vexecmove(
    n: c_int,
    nodes: *const c_int,
    pids: *mut c_int,
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    // SAFETY: as the caller promises; no I/O list.
    unsafe { bproc_vexecmove_io(n, nodes, pids, std::ptr::null(), -1, cmd, argv, envp) }
}

/// [`bproc_vexecmove`] with an I/O list, applied to every process.
///
/// # Safety
/// As for [`bproc_vexecmove`], and `io` holds `iolen` entries.
#[no_mangle]
pub unsafe extern "C" fn bproc_vexecmove_io(
    n: c_int,
    nodes: *const c_int,
    pids: *mut c_int,
    io: *const Io,
    iolen: c_int,
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    guard(|| {
        if n <= 0 || nodes.is_null() || pids.is_null() {
            return Err(EINVAL);
        }
        // SAFETY: the caller gives `n` readable ints at `nodes`.
        let list = unsafe { std::slice::from_raw_parts(nodes, n as usize) }.to_vec();
        // SAFETY: as the caller promises.
        let prog = unsafe { program(cmd, argv, envp, io, iolen) }?;
        let got = bproc_client::launch::vexecmove(&list, &prog).map_err(failed)?;
        // SAFETY: the caller gives `n` writable ints at `pids`.
        let out = unsafe { std::slice::from_raw_parts_mut(pids, n as usize) };
        out.copy_from_slice(&got);
        Ok(n)
    })
}

/// `struct bproc_proc_info_t`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcInfo {
    /// The process's pid on the front end (its ghost's).
    pub pid: c_int,
    /// Its node.
    pub node: c_int,
}

/// The node process `pid` runs on: −1 for a local process, one that does not exist, or on
/// error (as BProc's, which never fails).
#[no_mangle]
pub extern "C" fn bproc_pidnode(pid: c_int) -> c_int {
    let found = || -> Option<c_int> {
        let procs = client().ok()?.procs().ok()?;
        procs.iter().find(|p| p.pid == pid).map(|p| p.node)
    };
    catch_unwind(found).ok().flatten().unwrap_or(NODE_MASTER)
}

/// Every remote process on `node` (`BPROC_NODE_ANY`: all), in a `malloc`ed array the caller
/// frees; returns the count.
///
/// # Safety
/// `list` is NULL or points at a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn bproc_proclist(node: c_int, list: *mut *mut ProcInfo) -> c_int {
    guard(|| {
        if list.is_null() {
            return Err(EINVAL);
        }
        let procs = client()?.procs().map_err(failed)?;
        let v: Vec<ProcInfo> = procs
            .iter()
            .filter(|p| node == BPROC_NODE_ANY || p.node == node)
            .map(|p| ProcInfo { pid: p.pid, node: p.node })
            .collect();
        let bytes = std::mem::size_of::<ProcInfo>() * v.len().max(1);
        // SAFETY: malloc of a positive size; the result is checked for NULL.
        let p = unsafe { libc::malloc(bytes) }.cast::<ProcInfo>();
        if p.is_null() {
            return Err(libc::ENOMEM);
        }
        // SAFETY: `p` holds room for `v.len()` entries; the regions do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(v.as_ptr(), p, v.len()) };
        // SAFETY: `list` is a valid, writable pointer (checked for NULL above).
        unsafe { *list = p };
        Ok(v.len() as c_int)
    })
}

/// Writes the caller's image to `fd` (`flags`: what goes by content, `BPROC_DUMP_*`).
/// Returns 0 here and 1 in a copy restored from the image; `EBUSY` for a process that cannot
/// move (threads, sockets, pipes, shared memory), with nothing written.
#[no_mangle]
pub extern "C" fn bproc_dump(fd: c_int, flags: c_int) -> c_int {
    guard(|| {
        if fd < 0 {
            return Err(libc::EBADF);
        }
        flush_all();
        // SAFETY: the caller passes an open fd, which stays open for this call.
        let out = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        match notifiers_stopped(|| bproc_client::migrate::dump(out, flags)).map_err(failed)? {
            bproc_client::migrate::Resumed::Dumped => Ok(0),
            bproc_client::migrate::Resumed::Restored(v) => Ok(v as c_int),
        }
    })
}

/// Replaces the caller with the image read from `fd` (made by [`bproc_dump`]): no return
/// on success, where the image's process returns 1 from its `bproc_dump`; the caller keeps
/// its pid, parent and fds 0 to 2. -1 with `errno` when the image cannot be restored here
/// (`ENOEXEC`: another kernel or CPU, or a referenced file differs; `EINVAL`: damaged).
#[no_mangle]
pub extern "C" fn bproc_undump(fd: c_int) -> c_int {
    guard(|| {
        if fd < 0 {
            return Err(libc::EBADF);
        }
        flush_all();
        // SAFETY: the caller passes an open fd, which stays open for this call.
        let file = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map(std::fs::File::from)
            .map_err(|e| e.raw_os_error().unwrap_or(libc::EBADF))?;
        let reader = std::io::BufReader::with_capacity(1 << 20, file);
        Err(failed(bproc_client::migrate::undump(reader)))
    })
}

/// Writes to `fd` the image of `cmd` run with `argv` and `envp`, stopped before its first
/// instruction (`flags` as for [`bproc_dump`]): a process restored from it starts the
/// program. The program never runs here. Returns 0; -1 with `errno` from the exec (`ENOENT`,
/// `EACCES`...) or `EBUSY` for sockets or pipes at fds 3 and up that it would inherit.
///
/// # Safety
/// `cmd` is a C string; `argv` and `envp` are NULL-terminated string arrays (or NULL).
#[no_mangle]
pub unsafe extern "C" fn bproc_execdump(
    fd: c_int,
    flags: c_int,
    cmd: *const c_char,
    argv: *const *const c_char,
    envp: *const *const c_char,
) -> c_int {
    guard(|| {
        if fd < 0 {
            return Err(libc::EBADF);
        }
        // SAFETY: the caller's promise.
        let (cmd, argv, envp) = unsafe { (text(cmd)?, strings(argv)?, strings(envp)?) };
        // SAFETY: the caller passes an open fd, which stays open for this call.
        let out = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        bproc_client::migrate::exec_dump(out, flags, cmd, &argv, &envp).map_err(failed)?;
        Ok(0)
    })
}

/// Empties the library list (root only).
#[no_mangle]
pub extern "C" fn bproc_libclear() -> c_int {
    call(|c| c.edit_libraries(bproc_client::LibOp::Clear, &[]))
}

/// `name` as a one-name list, or the error for a bad string.
///
/// # Safety
/// `name` is NULL or a C string.
unsafe fn lib_name(name: *const c_char) -> Result<Vec<String>, i32> {
    // SAFETY: the caller's promise.
    Ok(vec![unsafe { text(name) }?.to_owned()])
}

/// Adds the absolute path `name` to the library list (root only); adding a name already
/// there does nothing.
///
/// # Safety
/// `name` is a C string.
#[no_mangle]
pub unsafe extern "C" fn bproc_libadd(name: *const c_char) -> c_int {
    // SAFETY: the caller's promise.
    match unsafe { lib_name(name) } {
        Ok(n) => call(|c| c.edit_libraries(bproc_client::LibOp::Add, &n)),
        Err(e) => guard(|| Err(e)),
    }
}

/// Removes `name` from the library list (root only); `ENOENT` when it is not there.
///
/// # Safety
/// `name` is a C string.
#[no_mangle]
pub unsafe extern "C" fn bproc_libdel(name: *const c_char) -> c_int {
    // SAFETY: the caller's promise.
    match unsafe { lib_name(name) } {
        Ok(n) => call(|c| c.edit_libraries(bproc_client::LibOp::Delete, &n)),
        Err(e) => guard(|| Err(e)),
    }
}

/// Stores in `*list` a `malloc`ed run of NUL-terminated paths ending with an empty string:
/// the library list. Returns 0.
///
/// # Safety
/// `list` is NULL or points at a writable pointer.
#[no_mangle]
pub unsafe extern "C" fn bproc_liblist(list: *mut *mut c_char) -> c_int {
    guard(|| {
        if list.is_null() {
            return Err(EINVAL);
        }
        let names = client()?.libraries(&[]).map_err(failed)?;
        let mut bytes: Vec<u8> = Vec::new();
        for n in &names {
            bytes.extend_from_slice(n.as_bytes());
            bytes.push(0);
        }
        bytes.push(0);
        // SAFETY: malloc of a positive size; the result is checked for NULL.
        let p = unsafe { libc::malloc(bytes.len()) }.cast::<u8>();
        if p.is_null() {
            return Err(libc::ENOMEM);
        }
        // SAFETY: `p` holds `bytes.len()` bytes; the regions do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
        // SAFETY: `list` is a valid, writable pointer (checked for NULL above).
        unsafe { *list = p.cast() };
        Ok(0)
    })
}

/// BProc's text for `BE_*` codes, the C library's for the rest; takes `e` or `-e`. The
/// string is never freed.
#[no_mangle]
pub extern "C" fn bproc_strerror(err: c_int) -> *const c_char {
    static TEXTS: std::sync::Mutex<Vec<(c_int, std::ffi::CString)>> =
        std::sync::Mutex::new(Vec::new());
    let code = err.checked_abs().unwrap_or(0);
    let mut g = TEXTS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, s)) = g.iter().find(|(c, _)| *c == code) {
        return s.as_ptr();
    }
    let s = std::ffi::CString::new(bproc_client::strerror(code)).unwrap_or_default();
    let p = s.as_ptr();
    // The CString's heap buffer does not move when the vector grows.
    g.push((code, s));
    p
}
