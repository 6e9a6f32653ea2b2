//! A process image for a machine that lacks some of the files it names. A vector fork's image
//! names every regular file the process maps, so that the nodes that have them identical
//! (most clusters share the program's file) receive only the process's own pages; each
//! receiver is asked which it has (a probe), and the copy sent to it carries the others'
//! pages by content, read from the sender's files. A sender holding an image has every file
//! it names: the mover mapped them, and a node received it only once it had them.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bproc_image::{Header, Preamble, PREAMBLE_LEN};
use bproc_proto::conn::FileId;

use crate::restore::{inside, same_file};
use crate::CkptError;

/// The files `h` names by reference, as a probe asks about them.
pub fn named(h: &Header) -> Vec<FileId> {
    let files = h.by_reference().into_iter();
    files.map(|(path, size, mtime)| FileId { path: path.to_owned(), size, mtime }).collect()
}

/// The files the image in `image` names by reference (none if its header cannot be read: the
/// restore says why).
pub fn named_in(image: &[u8]) -> Vec<FileId> {
    bproc_image::header_of(image).map(|(h, _)| named(&h)).unwrap_or_default()
}

/// The header of the image held in `file`, read in place (threads sharing the file do not
/// move its offset).
pub fn header_in(file: &std::fs::File) -> Result<Header, CkptError> {
    let failed = |e| CkptError::sys("reading the process image's header", e);
    let mut pre = [0u8; PREAMBLE_LEN];
    file.read_exact_at(&mut pre, 0).map_err(failed)?;
    let parsed = Preamble::parse(&pre).map_err(bproc_image::ReadError::from)?;
    let mut body = vec![0u8; parsed.header_len as usize];
    file.read_exact_at(&mut body, PREAMBLE_LEN as u64).map_err(failed)?;
    Ok(Header::decode(&parsed, &body).map_err(bproc_image::ReadError::from)?)
}

/// `image` with the files in `lacking` (some it names) carried by content, read from this
/// machine's copies under `root`; refused when one of them is no longer the file named.
pub fn inline(image: &[u8], lacking: &[FileId], root: Option<&Path>) -> Result<Vec<u8>, CkptError> {
    let mut open = Vec::with_capacity(lacking.len());
    for f in lacking {
        let here = inside(root, &f.path);
        let changed = || {
            CkptError::Path(format!(
                "{} changed since the process was dumped, so its pages cannot be sent to a node \
                 that lacks it (fork again)",
                f.path
            ))
        };
        if !same_file(&here.to_string_lossy(), f.size, f.mtime) {
            return Err(changed());
        }
        let file = std::fs::File::open(&here).map_err(|e| CkptError::sys(f.path.clone(), e))?;
        open.push((f.path.as_str(), file));
    }
    let read = |path: &str, offset: u64, len: usize| {
        let (_, file) = open.iter().find(|(p, _)| *p == path).expect("only files asked about");
        let mut data = vec![0u8; len];
        let mut got = 0;
        while got < len {
            match file.read_at(&mut data[got..], offset + got as u64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        data.truncate(got);
        Ok(data)
    };
    let lacks = |path: &str| lacking.iter().any(|f| f.path == path);
    Ok(bproc_image::inline_files(image, lacks, read)?)
}

/// The copies of one image made for receivers that lack files, by what they lack: a vector
/// fork's nodes mostly lack the same ones, so each copy is made once.
#[derive(Default)]
pub struct Copies(Mutex<Vec<Made>>);

/// Which of the files a copy carries (true for each one), and the copy.
type Made = (Vec<bool>, Arc<Vec<u8>>);

impl Copies {
    /// What to send a receiver that answered `answer` (a byte per file of `files`, 1 for one
    /// it has): `None` for the image itself, else a copy carrying the files it lacks, made
    /// from `image()` with this machine's files under `root`.
    pub fn for_answer(
        &self,
        files: &[FileId],
        answer: &[u8],
        root: Option<&Path>,
        image: impl FnOnce() -> Result<bproc_image::SharedImage, CkptError>,
    ) -> Result<Option<Arc<Vec<u8>>>, CkptError> {
        let lacks: Vec<bool> = answer.iter().map(|a| *a != 1).collect();
        if !lacks.contains(&true) {
            return Ok(None);
        }
        let mut made = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, copy)) = made.iter().find(|(l, _)| *l == lacks) {
            return Ok(Some(copy.clone()));
        }
        let lacking: Vec<FileId> =
            files.iter().zip(&lacks).filter(|(_, l)| **l).map(|(f, _)| f.clone()).collect();
        let copy = Arc::new(inline((*image()?).as_ref(), &lacking, root)?);
        made.push((lacks, copy.clone()));
        Ok(Some(copy))
    }
}
