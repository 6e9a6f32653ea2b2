//! A large buffer filled once as bytes arrive (a node's copy of a vector fork's image): its
//! own anonymous mapping, grown with `mremap`, so growing never copies what it holds, and
//! advised to use huge pages once past its first 2 MiB, so filling 64 MiB takes about 32
//! page faults rather than 16,384 (faults, not the copy, were most of a node's time
//! receiving an image).

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;

use nix::sys::mman::{madvise, mmap_anonymous, mremap, munmap, MRemapFlags, MmapAdvise};
use nix::sys::mman::{MapFlags, ProtFlags};

/// The first mapping's size, and the unit the buffer grows by at least.
const STEP: usize = 2 << 20;

/// Bytes filled into memory of the buffer's own, from the front.
pub struct BigBuf {
    /// The mapping, when there is one.
    map: Option<NonNull<c_void>>,
    /// Bytes filled.
    len: usize,
    /// Bytes mapped.
    cap: usize,
}

// SAFETY: the mapping is owned by the buffer alone, like a Vec's allocation; shared
// references only read it.
unsafe impl Send for BigBuf {}
// SAFETY: as above: `&BigBuf` gives only `&[u8]`.
unsafe impl Sync for BigBuf {}

impl Default for BigBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl BigBuf {
    /// An empty buffer (nothing mapped yet).
    pub fn new() -> Self {
        BigBuf { map: None, len: 0, cap: 0 }
    }

    /// The unfilled memory after the filled bytes, at least `want` bytes of it (zeroes the
    /// first time it is lent). Fill some of it, then [`BigBuf::advance`] by what was filled.
    pub fn spare(&mut self, want: usize) -> std::io::Result<&mut [u8]> {
        let need = self.len.checked_add(want).ok_or(std::io::ErrorKind::OutOfMemory)?;
        if need > self.cap {
            let cap = need.max(self.cap.saturating_mul(2)).next_multiple_of(STEP);
            self.grow(cap)?;
        }
        let Some(map) = self.map else { return Ok(&mut []) };
        // SAFETY: the mapping holds `cap` bytes, readable and writable, owned by `self`,
        // which `&mut self` borrows for the slice's life; `len ≤ cap`.
        Ok(unsafe {
            std::slice::from_raw_parts_mut(
                map.as_ptr().cast::<u8>().add(self.len),
                self.cap - self.len,
            )
        })
    }

    /// Counts `n` more bytes of [`BigBuf::spare`] as filled.
    pub fn advance(&mut self, n: usize) {
        assert!(n <= self.cap - self.len, "advanced past the buffer's memory");
        self.len += n;
    }

    fn grow(&mut self, cap: usize) -> std::io::Result<()> {
        let size = NonZeroUsize::new(cap).ok_or(std::io::ErrorKind::InvalidInput)?;
        let map = match self.map {
            // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
            None => unsafe {
                mmap_anonymous(
                    None,
                    size,
                    ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                    MapFlags::MAP_PRIVATE,
                )?
            },
            // SAFETY: `old` is our mapping of `self.cap` bytes, and no slice of it outlives
            // the `&mut self` this runs under; the kernel moves its pages, not their bytes.
            Some(old) => unsafe { mremap(old, self.cap, cap, MRemapFlags::MREMAP_MAYMOVE, None)? },
        };
        self.map = Some(map);
        self.cap = cap;
        // A small image keeps small pages: a huge page would clear 2 MiB for a few KiB.
        if cap > STEP {
            // SAFETY: advice on our own mapping changes how its pages are backed, not their
            // contents. Without transparent huge pages it fails, and small pages serve as
            // well.
            let _ = unsafe { madvise(map, cap, MmapAdvise::MADV_HUGEPAGE) };
        }
        Ok(())
    }
}

impl std::ops::Deref for BigBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self.map {
            // SAFETY: the first `len` bytes of our mapping are filled, and nothing writes
            // them while `&self` is borrowed.
            Some(map) => unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<u8>(), self.len) },
            None => &[],
        }
    }
}

impl AsRef<[u8]> for BigBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl Drop for BigBuf {
    fn drop(&mut self) {
        if let Some(map) = self.map {
            // SAFETY: our mapping, of `cap` bytes; no slice of it outlives `self`.
            let _ = unsafe { munmap(map, self.cap) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Filled in pieces across several growths, it holds every byte in order.
    #[test]
    fn grows_without_losing_bytes() {
        let mut b = BigBuf::new();
        assert!(b.is_empty());
        let total = 5 * STEP + 123;
        let mut n = 0usize;
        while n < total {
            let piece = (total - n).min(100_000);
            let spare = b.spare(piece).unwrap();
            assert!(spare.len() >= piece);
            for (i, byte) in spare[..piece].iter_mut().enumerate() {
                *byte = ((n + i) % 251) as u8;
            }
            b.advance(piece);
            n += piece;
        }
        assert_eq!(b.len(), total);
        assert!(b.iter().enumerate().all(|(i, byte)| *byte == (i % 251) as u8));
    }
}
