//! The library list (BProc's `bplib`): files every machine has at the same path, so that a
//! process image names them instead of carrying them. The configuration's `libraries` and
//! `librariesfrombinary` lines fill it when the master starts; `bplib` changes it until the
//! master stops, as BProc's list lasted until the front end rebooted.
//!
//! Names are kept as real paths (symbolic links resolved on the front end), the way
//! `/proc/PID/maps` names mapped files, so `/lib/x86_64-linux-gnu/libc.so.6` matches a
//! process that mapped it through the `/lib -> usr/lib` link.

use std::collections::BTreeSet;
use std::sync::Mutex;

use bproc_proto::errno::{EINVAL, ENOENT, EPERM};
use bproc_proto::{LibOp, Message, MAX_PATH};

/// The list, shared by every client connection.
#[derive(Debug, Default)]
pub(crate) struct Libraries {
    names: Mutex<BTreeSet<String>>,
}

impl Libraries {
    /// A list holding `names`.
    pub fn new(names: impl IntoIterator<Item = String>) -> Self {
        Libraries { names: Mutex::new(names.into_iter().map(|n| real(&n)).collect()) }
    }

    fn names(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.names.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The reply to [`Message::LibList`]: everything, or those of `only` on the list.
    pub fn list(&self, only: &[String]) -> Message {
        let names = self.names();
        let names = if only.is_empty() {
            names.iter().cloned().collect()
        } else {
            let found: BTreeSet<&String> = only.iter().filter(|p| names.contains(*p)).collect();
            found.into_iter().cloned().collect()
        };
        Message::Libraries { names }
    }

    /// The reply to [`Message::LibEdit`] from a caller (`admin`: root). A refused edit
    /// changes nothing.
    pub fn edit(&self, admin: bool, op: LibOp, names: Vec<String>) -> Message {
        let error = |code, message: String| Message::Error { code, message };
        if !admin {
            return error(EPERM, "only root can change the library list".into());
        }
        if let Some(bad) = names.iter().find(|n| !n.starts_with('/') || n.len() > MAX_PATH) {
            return error(
                EINVAL,
                format!("library {bad:?}: give an absolute path of at most {MAX_PATH} bytes"),
            );
        }
        let mut list = self.names();
        match op {
            LibOp::Clear => list.clear(),
            LibOp::Add => list.extend(names.iter().map(|n| real(n))),
            LibOp::Delete => {
                // A name as listed, or as it was added.
                let found = |n: &String| {
                    Some(n.clone())
                        .filter(|n| list.contains(n))
                        .or_else(|| Some(real(n)).filter(|n| list.contains(n)))
                };
                let mut gone = Vec::new();
                for n in &names {
                    match found(n) {
                        Some(f) => gone.push(f),
                        None => return error(ENOENT, format!("library {n} is not on the list")),
                    }
                }
                for n in &gone {
                    list.remove(n);
                }
            }
        }
        Message::Ok
    }
}

/// `name` with symbolic links resolved, or as given when it does not exist.
fn real(name: &str) -> String {
    std::fs::canonicalize(name).map_or_else(|_| name.to_owned(), |p| p.to_string_lossy().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(m: Message) -> Vec<String> {
        match m {
            Message::Libraries { names } => names,
            m => panic!("{m:?}"),
        }
    }

    #[test]
    fn edits_need_root_and_deletes_need_the_name() {
        let l = Libraries::new(["/lib/a.so".to_owned()]);
        let add = vec!["/lib/b.so".to_owned(), "/lib/a.so".to_owned()];
        assert!(matches!(l.edit(false, LibOp::Add, add.clone()), Message::Error { code: 1, .. }));
        assert_eq!(l.edit(true, LibOp::Add, add), Message::Ok);
        assert_eq!(names(l.list(&[])), ["/lib/a.so", "/lib/b.so"]);
        let only = ["/lib/b.so".to_owned(), "/lib/c.so".to_owned()];
        assert_eq!(names(l.list(&only)), ["/lib/b.so"]);
        let del = vec!["/lib/a.so".to_owned(), "/lib/c.so".to_owned()];
        let e = l.edit(true, LibOp::Delete, del);
        assert!(matches!(&e, Message::Error { code: 2, message } if message.contains("c.so")));
        assert_eq!(names(l.list(&[])).len(), 2, "a refused delete changes nothing");
        let rel = vec!["libc.so".to_owned()];
        assert!(matches!(l.edit(true, LibOp::Add, rel), Message::Error { code: 22, .. }));
        assert_eq!(l.edit(true, LibOp::Clear, Vec::new()), Message::Ok);
        assert!(names(l.list(&[])).is_empty());
    }

    #[test]
    fn names_are_kept_as_real_paths() {
        let dir = std::env::temp_dir().join(format!("bproc-libs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("libreal.so.1");
        let link = dir.join("libreal.so");
        std::fs::write(&file, b"x").unwrap();
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let real = std::fs::canonicalize(&file).unwrap().to_string_lossy().into_owned();
        let l = Libraries::default();
        let link = link.to_string_lossy().into_owned();
        assert_eq!(l.edit(true, LibOp::Add, vec![link.clone()]), Message::Ok);
        assert_eq!(names(l.list(&[])), std::slice::from_ref(&real));
        assert_eq!(names(l.list(&[real])).len(), 1);
        assert_eq!(l.edit(true, LibOp::Delete, vec![link]), Message::Ok, "deleted as added");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
