//! A large buffer filled once as bytes arrive (a node's copy of a vector fork's image): its
//! own anonymous mapping, grown with `mremap`, so growing never copies what it holds, and
//! advised to use huge pages once past its first 2 MiB, so filling 64 MiB takes about 32
//! page faults rather than 16,384 (faults, not the copy, were most of a node's time
//! receiving an image). When the length is known first, [`Filling`] maps it whole at once,
//! so that what is filled can be read (and passed on) while the rest arrives. A small one
//! let go leaves its mapping for the next (see `Kept`): a node forks small images often,
//! and each fresh mapping cost it a page fault per page as it filled.

use std::ffi::c_void;
use std::num::NonZeroUsize;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use nix::sys::mman::{madvise, mmap_anonymous, mremap, munmap, MRemapFlags, MmapAdvise};
use nix::sys::mman::{MapFlags, ProtFlags};

/// The first mapping's size, and the unit the buffer grows by at least.
const STEP: usize = 2 << 20;

/// The page size a mapping is counted in whole of (at least this).
const PAGE: usize = 4096;

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
            None => map_new(size)?,
            // SAFETY: `old` is our mapping of `self.cap` bytes, and no slice of it outlives
            // the `&mut self` this runs under; the kernel moves its pages, not their bytes.
            Some(old) => unsafe { mremap(old, self.cap, cap, MRemapFlags::MREMAP_MAYMOVE, None)? },
        };
        self.map = Some(map);
        self.cap = cap;
        advise_huge(map, cap);
        Ok(())
    }
}

/// A fresh private anonymous mapping of `size` bytes, readable and writable.
fn map_new(size: NonZeroUsize) -> std::io::Result<NonNull<c_void>> {
    // SAFETY: a new mapping; nothing else refers to it.
    Ok(unsafe {
        mmap_anonymous(
            None,
            size,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_PRIVATE,
        )?
    })
}

/// Advises huge pages for a mapping of `cap` bytes past the first [`STEP`]: a small image
/// keeps small pages, where a huge page would clear 2 MiB for a few KiB.
fn advise_huge(map: NonNull<c_void>, cap: usize) {
    if cap > STEP {
        // SAFETY: advice on our own mapping changes how its pages are backed, not their
        // contents. Without transparent huge pages it fails, and small pages serve as well.
        let _ = unsafe { madvise(map, cap, MmapAdvise::MADV_HUGEPAGE) };
    }
}

/// The mapping of a [`Filling`] of at most [`STEP`] bytes that was let go, kept with its
/// pages for the next one that fits: the pages of a fresh mapping are each a page fault as
/// the buffer fills (a tenth of the work of a node that forwards a small vector fork's
/// image), and the unmapping a cost of its own. One is kept, the largest let go, and none
/// past `STEP` (a large image's pages go back at once).
struct Kept {
    map: NonNull<c_void>,
    mapped: usize,
}

// SAFETY: a kept mapping is owned by the slot alone until a new Filling takes it over.
unsafe impl Send for Kept {}

static KEPT: Mutex<Option<Kept>> = Mutex::new(None);

/// A buffer of a length known before it is filled, mapped whole at once so it never moves:
/// one [`Filler`] fills it from the front while any number of readers read what is filled
/// ([`Filling::filled`]), each byte written once and never again.
pub struct Filling {
    /// The mapping, when there is one (none for length 0).
    map: Option<NonNull<c_void>>,
    /// Bytes mapped.
    mapped: usize,
    /// The length to fill (at most `mapped`).
    cap: usize,
    /// Bytes filled, published by the filler after it wrote them.
    filled: AtomicUsize,
}

// SAFETY: the mapping is owned by the buffer alone; readers see only the filled bytes,
// which nothing writes again, and the one filler writes only past them.
unsafe impl Send for Filling {}
// SAFETY: as above.
unsafe impl Sync for Filling {}

/// The one writer of a [`Filling`].
pub struct Filler(Arc<Filling>);

impl Filling {
    /// A buffer for `len` bytes, empty, and its filler.
    pub fn new(len: usize) -> std::io::Result<(Arc<Filling>, Filler)> {
        let (map, mapped) = match NonZeroUsize::new(len) {
            None => (None, 0),
            Some(size) => {
                let kept =
                    KEPT.lock().unwrap_or_else(|e| e.into_inner()).take_if(|k| len <= k.mapped);
                match kept {
                    Some(k) => (Some(k.map), k.mapped),
                    None => {
                        let map = map_new(size)?;
                        advise_huge(map, len);
                        (Some(map), len.next_multiple_of(PAGE))
                    }
                }
            }
        };
        let f = Arc::new(Filling { map, mapped, cap: len, filled: AtomicUsize::new(0) });
        Ok((f.clone(), Filler(f)))
    }

    /// The length to fill.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// The bytes filled so far.
    pub fn filled(&self) -> &[u8] {
        let len = self.filled.load(Ordering::Acquire);
        match self.map {
            // SAFETY: the first `len` bytes were written before `len` was published
            // (release, read here with acquire), and nothing writes them again; the mapping
            // lives as long as `self`.
            Some(map) => unsafe { std::slice::from_raw_parts(map.as_ptr().cast::<u8>(), len) },
            None => &[],
        }
    }
}

impl From<BigBuf> for Filling {
    /// A buffer already filled: `b`'s bytes, its mapping taken over without a copy.
    fn from(mut b: BigBuf) -> Filling {
        let (map, mapped, len) = (b.map.take(), b.cap, b.len);
        Filling { map, mapped, cap: len, filled: AtomicUsize::new(len) }
    }
}

impl AsRef<[u8]> for Filling {
    fn as_ref(&self) -> &[u8] {
        self.filled()
    }
}

impl Drop for Filling {
    fn drop(&mut self) {
        let Some(map) = self.map.take() else { return };
        let mut gone = Kept { map, mapped: self.mapped };
        if self.cap > 0 && gone.mapped <= STEP {
            // The larger of ours and the one kept stays.
            let mut kept = KEPT.lock().unwrap_or_else(|e| e.into_inner());
            if kept.as_ref().is_none_or(|k| k.mapped < gone.mapped) {
                match kept.replace(gone) {
                    Some(old) => gone = old,
                    None => return,
                }
            }
        }
        // SAFETY: a mapping of `mapped` bytes that nothing else refers to (ours, or the one
        // kept that ours replaced); no slice of it outlives its Filling.
        let _ = unsafe { munmap(gone.map, gone.mapped) };
    }
}

impl Filler {
    /// The unfilled memory after the filled bytes (holding whatever a kept mapping last
    /// held). Fill some of it, then [`Filler::advance`] by what was filled.
    pub fn spare(&mut self) -> &mut [u8] {
        let b = &*self.0;
        let len = b.filled.load(Ordering::Relaxed);
        match b.map {
            // SAFETY: the bytes past `len` are written by this filler alone (there is one per
            // buffer, and `&mut self` borrows it) and read by no one until published.
            Some(map) => unsafe {
                std::slice::from_raw_parts_mut(map.as_ptr().cast::<u8>().add(len), b.cap - len)
            },
            None => &mut [],
        }
    }

    /// Publishes `n` more bytes of [`Filler::spare`] as filled.
    pub fn advance(&mut self, n: usize) {
        let b = &*self.0;
        let len = b.filled.load(Ordering::Relaxed);
        assert!(n <= b.cap - len, "advanced past the buffer's memory");
        b.filled.store(len + n, Ordering::Release);
    }

    /// The bytes filled so far.
    pub fn filled(&self) -> &[u8] {
        self.0.filled()
    }

    /// Bytes filled so far.
    pub fn len(&self) -> usize {
        self.0.filled.load(Ordering::Relaxed)
    }

    /// Whether nothing is filled yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
        let f = Filling::from(b);
        assert_eq!((f.filled().len(), f.capacity()), (total, total));
        assert!(f.filled().iter().enumerate().all(|(i, byte)| *byte == (i % 251) as u8));
    }

    /// Readers on other threads see each piece once it is published, and only then.
    #[test]
    fn readers_see_what_is_filled() {
        let total = 3 * STEP + 77;
        let (buf, mut filler) = Filling::new(total).unwrap();
        assert_eq!(buf.capacity(), total);
        let reader = {
            let buf = buf.clone();
            std::thread::spawn(move || {
                let mut seen = 0;
                while seen < total {
                    let now = buf.filled();
                    assert!(now.len() >= seen);
                    let mut new = now[seen..].iter().enumerate();
                    assert!(new.all(|(i, b)| *b == ((seen + i) % 251) as u8));
                    seen = now.len();
                }
            })
        };
        while !filler.spare().is_empty() {
            let at = filler.len();
            let spare = filler.spare();
            let piece = spare.len().min(65_536);
            for (i, byte) in spare[..piece].iter_mut().enumerate() {
                *byte = ((at + i) % 251) as u8;
            }
            filler.advance(piece);
        }
        reader.join().unwrap();
        assert_eq!(buf.filled().len(), total);
        let (empty, mut none) = Filling::new(0).unwrap();
        assert!(empty.filled().is_empty() && none.spare().is_empty());
    }

    /// A buffer made after another was let go (whose mapping it may take over, stale bytes
    /// and all) offers its own length, and holds only what it was filled with.
    #[test]
    fn a_kept_mapping_serves_a_smaller_buffer() {
        let fill = |len: usize, seed: usize| {
            let (buf, mut filler) = Filling::new(len).unwrap();
            assert_eq!(filler.spare().len(), len);
            for (i, byte) in filler.spare().iter_mut().enumerate() {
                *byte = ((i + seed) % 251) as u8;
            }
            filler.advance(len);
            assert!(buf.filled().iter().enumerate().all(|(i, b)| *b == ((i + seed) % 251) as u8));
            buf
        };
        drop(fill(3 * PAGE, 1));
        let smaller = fill(PAGE + 10, 2);
        assert_eq!((smaller.capacity(), smaller.filled().len()), (PAGE + 10, PAGE + 10));
        drop(smaller);
        // Larger than any kept one, and too large to be kept itself.
        drop(fill(STEP + PAGE, 3));
        drop(fill(STEP, 4));
    }
}
