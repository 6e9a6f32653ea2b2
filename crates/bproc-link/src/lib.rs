//! Links between bproc daemons: reading and writing frames on async streams, the cluster key,
//! and the mutual challenge-response that opens every master ↔ slave link.
//!
//! The handshake proves to each side that the other holds the cluster key, without sending
//! the key and before either side reveals anything else:
//!
//! ```text
//!  master                                   slave
//!    | -- AuthChallenge { Nm } -------------> |
//!    | <- AuthResponse { Ns, HMAC(K, "bproc-slave"  | Nm | Ns) } --
//!    |    (verify, else log and close)        |
//!    | -- AuthConfirm { HMAC(K, "bproc-master" | Nm | Ns) } ------> |
//!    |                                        | (verify, else close)
//! ```
//! Both nonces are 32 fresh random bytes, so a recorded exchange cannot be replayed, and the
//! two labels keep one side's proof from being reflected back as the other's. HMAC-SHA256 and
//! its constant-time comparison come from RustCrypto.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod guard;
mod key;

use std::time::Duration;

use bproc_proto::{DecodeError, Header, Message, HEADER_LEN};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt,
};

pub use key::{ClusterKey, KeyError};

/// Where the cluster key lives unless a configuration or option says otherwise.
pub const DEFAULT_KEYFILE: &str = "/etc/clustermatic/key";

/// How long a peer has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors on a link.
#[derive(Debug, Error)]
pub enum LinkError {
    /// The socket failed.
    #[error("connection failed")]
    Io(#[from] std::io::Error),
    /// The peer sent bytes that are not a valid frame.
    #[error("bad frame from peer")]
    Decode(#[from] DecodeError),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer sent a message that does not belong at this point.
    #[error("expected {expected}, received {received}")]
    Unexpected {
        /// What the protocol called for.
        expected: &'static str,
        /// What arrived.
        received: &'static str,
    },
    /// The peer does not hold the cluster key.
    #[error("peer failed authentication: it does not hold the cluster key (check the key file on both sides)")]
    AuthFailed,
    /// The peer took too long.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The peer refused us, with its reason.
    #[error("refused by peer: {0}")]
    Refused(String),
    /// The peer refused us for now, with its reason, and we may try again (an address or
    /// port it does not take, which a configuration reload may change).
    #[error("refused by peer: {0}")]
    Declined(String),
}

/// How long a frame may take to arrive once its first byte has: a peer that starts a frame
/// and stalls is dropped, instead of holding a connection (and the bytes it sent) forever.
pub const FRAME_DEADLINE: Duration = Duration::from_secs(20);

/// The most a reader sets aside for a body before its bytes arrive: beyond this, the buffer
/// grows as data comes, so a header's claim alone costs nothing.
const FIRST_ALLOC: usize = 16 << 10;

/// Reads `len` bytes of a body (or the rest of a frame) into `buf`, growing it only as
/// bytes arrive: the length is the peer's word, not an allocation.
async fn read_claimed<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    len: usize,
) -> Result<(), LinkError> {
    let want = buf.len() + len;
    // Exactly what is claimed, up to the first allocation's bound, then doubling as bytes
    // come: no read past the claim, so no buffer grown (and the body copied) only to see
    // its end.
    buf.reserve_exact(len.min(FIRST_ALLOC));
    while buf.len() < want {
        if read_more(r, buf, want).await? == 0 {
            return Err(LinkError::Closed);
        }
    }
    Ok(())
}

/// One read of what has come into `buf`, which grows towards `want` bytes in all: room for
/// what is left, up to twice what it holds. Cancel-safe: bytes are taken only when returned.
async fn read_more<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
    want: usize,
) -> std::io::Result<usize> {
    if buf.len() == buf.capacity() {
        buf.reserve_exact((want - buf.len()).min(buf.len()));
    }
    let room = (want - buf.len()) as u64;
    r.take(room).read_buf(buf).await
}

/// Reads one frame. Returns `Ok(None)` on a clean end of stream between frames.
///
/// Waiting for a frame to start has no limit (links and watchers are quiet for long), but
/// once its first byte is in, the whole frame must follow within [`FRAME_DEADLINE`]. The body
/// buffer grows as bytes arrive, so a header claiming a large body costs nothing until the
/// body comes.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<Option<(u32, Message)>, LinkError> {
    let mut head = [0u8; HEADER_LEN];
    // The header as far as it has come (one read for all of it, as a rule): a clean end of
    // stream before its first byte is the end of the conversation.
    let got = loop {
        match r.read(&mut head).await {
            Ok(0) => return Ok(None),
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
    };
    let rest = async {
        r.read_exact(&mut head[got..]).await.map_err(eof_is_closed)?;
        // The header bounds the body length before anything is read for it.
        let h = Header::parse(&head)?;
        let mut body = Vec::new();
        read_claimed(r, &mut body, h.len as usize).await?;
        Ok::<_, LinkError>((h, body))
    };
    let (h, body) = tokio::time::timeout(FRAME_DEADLINE, rest)
        .await
        .map_err(|_| LinkError::Timeout("a frame (it must arrive within 20 s of its start)"))??;
    Ok(Some((h.id, bproc_proto::decode_body(&h, &body)?)))
}

/// Reads frames from one stream and may be cancelled at any await: what a dropped
/// [`FrameReader::next`] had read stays here for the next call. A `select!` loop that also
/// waits for something else uses it instead of [`read_frame`], whose partial frame would be
/// lost when the other branch wins, leaving the stream out of step.
///
/// Like [`read_frame`] it reads no byte past the frame it returns, grows the body only as
/// bytes arrive, and gives a started frame [`FRAME_DEADLINE`] to complete.
#[derive(Debug)]
pub struct FrameReader<R> {
    r: R,
    head: [u8; HEADER_LEN],
    /// Bytes of the header in `head`.
    got: usize,
    /// The header once whole, and the body so far.
    frame: Option<(Header, Vec<u8>)>,
    /// When the frame being read began to arrive.
    started: Option<tokio::time::Instant>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads frames from `r`.
    pub fn new(r: R) -> Self {
        FrameReader { r, head: [0; HEADER_LEN], got: 0, frame: None, started: None }
    }

    /// The next frame; `Ok(None)` on a clean end of stream between frames. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<(u32, Message)>, LinkError> {
        loop {
            if matches!(&self.frame, Some((h, body)) if body.len() == h.len as usize) {
                let (h, body) = self.frame.take().expect("matched above");
                self.started = None;
                return Ok(Some((h.id, bproc_proto::decode_body(&h, &body)?)));
            }
            // Nothing is lost if this await is dropped: both reads take bytes only when they
            // return them.
            let started = self.started;
            let read = async {
                match &mut self.frame {
                    None => self.r.read(&mut self.head[self.got..]).await,
                    Some((h, body)) => read_more(&mut self.r, body, h.len as usize).await,
                }
            };
            let n = match started {
                None => read.await?,
                Some(t) => Self::within(t, read).await?,
            };
            if n == 0 {
                return match self.started {
                    None => Ok(None),
                    Some(_) => Err(LinkError::Closed),
                };
            }
            self.started.get_or_insert_with(tokio::time::Instant::now);
            if self.frame.is_none() {
                self.got += n;
                if self.got == HEADER_LEN {
                    self.got = 0;
                    // The header bounds the body length before anything is read for it.
                    let h = Header::parse(&self.head)?;
                    let body = Vec::with_capacity((h.len as usize).min(FIRST_ALLOC));
                    self.frame = Some((h, body));
                }
            }
        }
    }

    async fn within(
        started: tokio::time::Instant,
        read: impl std::future::Future<Output = std::io::Result<usize>>,
    ) -> Result<usize, LinkError> {
        match tokio::time::timeout_at(started + FRAME_DEADLINE, read).await {
            Ok(n) => Ok(n?),
            Err(_) => Err(LinkError::Timeout("a frame (it must arrive within 20 s of its start)")),
        }
    }
}

fn eof_is_closed(e: std::io::Error) -> LinkError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        LinkError::Closed
    } else {
        LinkError::Io(e)
    }
}

/// Reads one frame, treating end of stream as [`LinkError::Closed`].
pub async fn expect_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<(u32, Message), LinkError> {
    read_frame(r).await?.ok_or(LinkError::Closed)
}

/// Writes `id`/`msg` and the frames `more` has ready at once (up to about 64 KiB of them) in
/// one write: what a daemon queued together reaches its peer with one wakeup, where a write
/// per frame costs a wakeup each (and on a virtual cluster the receiver's side of each
/// delivery, which runs in the sender's time).
pub async fn write_frames<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: u32,
    msg: &Message,
    mut more: impl FnMut() -> Option<(u32, Message)>,
) -> Result<(), LinkError> {
    let mut out = bproc_proto::encode(id, msg);
    while out.len() < 64 << 10 {
        let Some((id, msg)) = more() else { break };
        out.extend_from_slice(&bproc_proto::encode(id, &msg));
    }
    w.write_all(&out).await?;
    w.flush().await?;
    Ok(())
}

/// Writes one frame and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    id: u32,
    msg: &Message,
) -> Result<(), LinkError> {
    w.write_all(&bproc_proto::encode(id, msg)).await?;
    w.flush().await?;
    Ok(())
}

/// Answers one staged-file request on `s`, whose 21-byte header (token, rank, fd 255) was
/// already read and checked: reads the file's 32-byte hash and sends its size (u64,
/// big-endian) and content, or closes the connection for a hash it does not serve. The node
/// checks the content against the hash. Used by bpsh for launches and by bpmaster for the
/// configuration's libraries.
pub async fn serve_staged_file<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    files: &std::collections::HashMap<[u8; 32], std::path::PathBuf>,
) {
    let mut hash = [0u8; 32];
    if s.read_exact(&mut hash).await.is_err() {
        return;
    }
    let Some(path) = files.get(&hash) else { return };
    let Ok(mut f) = tokio::fs::File::open(path).await else { return };
    let Ok(meta) = f.metadata().await else { return };
    if s.write_all(&meta.len().to_be_bytes()).await.is_ok() {
        let _ = tokio::io::copy(&mut f, s).await;
        let _ = s.shutdown().await;
    }
}

fn proof(key: &ClusterKey, label: &[u8], nm: &[u8; 32], ns: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(label);
    mac.update(nm);
    mac.update(ns);
    mac
}

const SLAVE_LABEL: &[u8] = b"bproc-slave\0";
const MASTER_LABEL: &[u8] = b"bproc-master\0";

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the kernel's random source failed");
    n
}

/// Label of sealed frames' MACs, apart from the handshake's.
const SEAL_LABEL: &[u8] = b"bproc-sealed-frame\0";

fn seal_mac(key: &ClusterKey, frame: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key.bytes()).expect("HMAC takes any key length");
    mac.update(SEAL_LABEL);
    mac.update(frame);
    mac
}

/// Seals one encoded frame: appends an HMAC-SHA256 of it under the cluster key, for a
/// one-way message whose receiver checks that it comes from a member of the cluster, without
/// the round trips of a handshake (slaves pass launch trees on this way). The message itself
/// must carry what makes a replay harmless (a nonce and a time).
pub fn seal(key: &ClusterKey, mut frame: Vec<u8>) -> Vec<u8> {
    let mac: [u8; 32] = seal_mac(key, &frame).finalize().into_bytes().into();
    frame.extend_from_slice(&mac);
    frame
}

/// Reads a frame that [`seal`] sealed and checks its MAC before decoding it. A frame
/// already whole in `r`'s buffer (a launch part mostly is) is proved and decoded where it
/// lies; another grows in memory only as its bytes arrive (nothing is set aside for the
/// length the unauthenticated header claims). The caller bounds the time it may take.
pub async fn read_sealed<R: AsyncBufRead + Unpin>(
    r: &mut R,
    key: &ClusterKey,
) -> Result<Message, LinkError> {
    let buf = r.fill_buf().await?;
    if let Some(head) = buf.first_chunk::<HEADER_LEN>() {
        let h = Header::parse(head)?;
        let end = HEADER_LEN + h.len as usize;
        if let (Some(frame), Some(mac)) = (buf.get(..end), buf.get(end..end + 32)) {
            seal_mac(key, frame).verify_slice(mac).map_err(|_| LinkError::AuthFailed)?;
            let msg = bproc_proto::decode_body(&h, &frame[HEADER_LEN..])?;
            r.consume(end + 32);
            return Ok(msg);
        }
    }
    let mut head = [0u8; HEADER_LEN];
    r.read_exact(&mut head).await.map_err(eof_is_closed)?;
    let h = Header::parse(&head)?;
    let mut frame = Vec::with_capacity(HEADER_LEN + (h.len as usize).min(FIRST_ALLOC));
    frame.extend_from_slice(&head);
    read_claimed(r, &mut frame, h.len as usize).await?;
    let mut mac = [0u8; 32];
    r.read_exact(&mut mac).await.map_err(eof_is_closed)?;
    seal_mac(key, &frame).verify_slice(&mac).map_err(|_| LinkError::AuthFailed)?;
    Ok(bproc_proto::decode_body(&h, &frame[HEADER_LEN..])?)
}

/// Runs the master's side of the handshake on a fresh slave connection.
pub async fn master_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
) -> Result<(), LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let nm = nonce();
        write_frame(s, 0, &Message::AuthChallenge { nonce: nm }).await?;
        let (_, msg) = expect_frame(s).await?;
        let Message::AuthResponse { nonce: ns, mac } = msg else {
            return Err(LinkError::Unexpected { expected: "AuthResponse", received: msg.name() });
        };
        if proof(key, SLAVE_LABEL, &nm, &ns).verify_slice(&mac).is_err() {
            // Tell the peer nothing but that it failed; then the caller closes.
            let refusal = Message::Disconnect {
                reason: "authentication failed: this slave does not hold the master's cluster key"
                    .into(),
                reconnect: false,
            };
            let _ = write_frame(s, 0, &refusal).await;
            return Err(LinkError::AuthFailed);
        }
        let mac: [u8; 32] = proof(key, MASTER_LABEL, &nm, &ns).finalize().into_bytes().into();
        write_frame(s, 0, &Message::AuthConfirm { mac }).await
    })
    .await
    .map_err(|_| LinkError::Timeout("authentication"))?
}

/// Runs the slave's side of the handshake on a fresh connection to the master.
pub async fn slave_handshake<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    key: &ClusterKey,
) -> Result<(), LinkError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let (_, msg) = expect_frame(s).await?;
        let nm = match msg {
            Message::AuthChallenge { nonce } => nonce,
            // Refused before the handshake (an address or port the master does not take).
            Message::Disconnect { reason, reconnect: true } => {
                return Err(LinkError::Declined(reason))
            }
            Message::Disconnect { reason, reconnect: false } => {
                return Err(LinkError::Refused(reason))
            }
            other => {
                return Err(LinkError::Unexpected {
                    expected: "AuthChallenge",
                    received: other.name(),
                })
            }
        };
        let ns = nonce();
        let mac: [u8; 32] = proof(key, SLAVE_LABEL, &nm, &ns).finalize().into_bytes().into();
        write_frame(s, 0, &Message::AuthResponse { nonce: ns, mac }).await?;
        match expect_frame(s).await? {
            (_, Message::AuthConfirm { mac }) => proof(key, MASTER_LABEL, &nm, &ns)
                .verify_slice(&mac)
                .map_err(|_| LinkError::AuthFailed),
            (_, Message::Disconnect { reason, .. }) => Err(LinkError::Refused(reason)),
            (_, other) => {
                Err(LinkError::Unexpected { expected: "AuthConfirm", received: other.name() })
            }
        }
    })
    .await
    .map_err(|_| LinkError::Timeout("authentication"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn pair(
        mk: &ClusterKey,
        sk: &ClusterKey,
    ) -> (Result<(), LinkError>, Result<(), LinkError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let (m, s) = tokio::join!(master_handshake(&mut a, mk), slave_handshake(&mut b, sk));
        (m, s)
    }

    #[tokio::test]
    async fn sealed_frames_need_the_key_and_intact_bytes() {
        let k = ClusterKey::generate();
        let msg = Message::Error { code: 1, message: "sealed".into() };
        let buf = seal(&k, bproc_proto::encode(0, &msg));
        assert_eq!(read_sealed(&mut &buf[..], &k).await.unwrap(), msg);
        let other = ClusterKey::generate();
        assert!(matches!(read_sealed(&mut &buf[..], &other).await, Err(LinkError::AuthFailed)));
        let mut tampered = buf.clone();
        tampered[HEADER_LEN + 3] ^= 1;
        assert!(matches!(read_sealed(&mut &tampered[..], &k).await, Err(LinkError::AuthFailed)));
        // A frame not whole in the buffer is read through it, and proved the same way; two
        // frames whole in it are taken one at a time.
        let small = |b| tokio::io::BufReader::with_capacity(8, b);
        let mut r = small(&buf[..]);
        assert_eq!(read_sealed(&mut r, &k).await.unwrap(), msg);
        assert!(matches!(read_sealed(&mut r, &k).await, Err(LinkError::Closed)));
        let mut r = small(&tampered[..]);
        assert!(matches!(read_sealed(&mut r, &k).await, Err(LinkError::AuthFailed)));
        let two = [buf.clone(), buf.clone()].concat();
        let mut r = &two[..];
        assert_eq!(read_sealed(&mut r, &k).await.unwrap(), msg);
        assert_eq!(r.len(), buf.len());
        assert_eq!(read_sealed(&mut r, &k).await.unwrap(), msg);
        assert!(r.is_empty());
    }

    /// A header claiming the largest body, then silence: the reader waits (for at most
    /// [`FRAME_DEADLINE`]) without having set the body aside, and a close mid-frame is
    /// `Closed`.
    #[tokio::test(start_paused = true)]
    async fn a_started_frame_must_finish_in_time() {
        let mut head = bproc_proto::encode(1, &Message::NodeList);
        head[12..16].copy_from_slice(&(bproc_proto::MAX_BODY as u32).to_be_bytes());
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&head).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let r = read_frame(&mut b).await;
        assert!(matches!(r, Err(LinkError::Timeout(_))), "{r:?}");
        assert_eq!(t0.elapsed(), FRAME_DEADLINE);
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&head).await.unwrap();
        a.write_all(b"partial").await.unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(LinkError::Closed)));
        // A quiet link between frames is no error.
        let (a, mut b) = tokio::io::duplex(64);
        let wait = tokio::time::timeout(FRAME_DEADLINE * 10, read_frame(&mut b)).await;
        assert!(wait.is_err(), "still waiting for a frame to start");
        drop(a);
    }

    /// A `select!` that drops `next` while a frame is half in loses nothing: the frame
    /// arrives whole at the following call, and the one after it too, in step.
    #[tokio::test(start_paused = true)]
    async fn a_frame_reader_cancelled_mid_frame_stays_in_step() {
        let first = bproc_proto::encode(7, &Message::Error { code: 5, message: "one".into() });
        let second = bproc_proto::encode(8, &Message::NodeList);
        let (mut a, b) = tokio::io::duplex(64);
        let mut frames = FrameReader::new(b);
        for cut in [3, HEADER_LEN, HEADER_LEN + 2] {
            a.write_all(&first[..cut]).await.unwrap();
            let wait = tokio::time::timeout(Duration::from_millis(10), frames.next()).await;
            assert!(wait.is_err(), "half a frame is not a frame");
            a.write_all(&first[cut..]).await.unwrap();
            a.write_all(&second).await.unwrap();
            let (id, msg) = frames.next().await.unwrap().unwrap();
            assert_eq!((id, msg), (7, Message::Error { code: 5, message: "one".into() }));
            assert_eq!(frames.next().await.unwrap().unwrap(), (8, Message::NodeList));
        }
        // Its deadline counts from the frame's first byte, across cancelled calls.
        a.write_all(&first[..5]).await.unwrap();
        let t0 = tokio::time::Instant::now();
        let _ = tokio::time::timeout(Duration::from_secs(5), frames.next()).await;
        assert!(matches!(frames.next().await, Err(LinkError::Timeout(_))));
        assert_eq!(t0.elapsed(), FRAME_DEADLINE);
        // A clean end between frames; a close mid-frame.
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        assert!(FrameReader::new(b).next().await.unwrap().is_none());
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&second[..4]).await.unwrap();
        drop(a);
        assert!(matches!(FrameReader::new(b).next().await, Err(LinkError::Closed)));
    }

    /// A frame whose body is beyond the first allocation comes in pieces, with `next`
    /// dropped between them: it is read whole and in step.
    #[tokio::test]
    async fn a_frame_reader_takes_a_large_body_in_pieces() {
        let spec = bproc_proto::ProcSpec {
            env: (0..3000).map(|i| format!("VARIABLE_{i}=value")).collect(),
            ..Default::default()
        };
        let big = Message::Launch { nodes: vec![0], spec, ghosts: vec![], io_ports: vec![] };
        let frame = bproc_proto::encode(3, &big);
        assert!(frame.len() > 3 * FIRST_ALLOC);
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut frames = FrameReader::new(b);
        for piece in frame.chunks(7000) {
            a.write_all(piece).await.unwrap();
            let wait = tokio::time::timeout(Duration::from_millis(5), frames.next()).await;
            if let Ok(got) = wait {
                assert_eq!(got.unwrap().unwrap(), (3, big.clone()));
            }
        }
        a.write_all(&bproc_proto::encode(4, &Message::NodeList)).await.unwrap();
        assert_eq!(frames.next().await.unwrap().unwrap(), (4, Message::NodeList));
    }

    /// A claimed body, small or beyond the first allocation and in pieces, is read whole
    /// into a buffer no larger than the claim, and nothing after it is taken.
    #[tokio::test]
    async fn a_claimed_body_is_read_exactly() {
        for len in [0, 1, 2017, FIRST_ALLOC, 5 * FIRST_ALLOC + 3] {
            let body: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let (mut a, mut b) = tokio::io::duplex(1000);
            let sent = body.clone();
            let writer = tokio::spawn(async move {
                a.write_all(&sent).await.unwrap();
                a.write_all(b"next").await.unwrap();
                a
            });
            let mut buf = b"head".to_vec();
            read_claimed(&mut b, &mut buf, len).await.unwrap();
            assert_eq!(&buf[4..], &body[..]);
            assert!(buf.capacity() <= 4 + len.max(4), "{} for {len}", buf.capacity());
            let mut next = [0u8; 4];
            b.read_exact(&mut next).await.unwrap();
            assert_eq!(&next, b"next");
            drop(writer.await.unwrap());
        }
    }

    #[tokio::test]
    async fn same_key_authenticates_both_ways() {
        let k = ClusterKey::generate();
        let (m, s) = pair(&k, &k).await;
        m.unwrap();
        s.unwrap();
    }

    #[tokio::test]
    async fn wrong_key_is_refused_by_the_master() {
        let (m, s) = pair(&ClusterKey::generate(), &ClusterKey::generate()).await;
        assert!(matches!(m, Err(LinkError::AuthFailed)));
        assert!(matches!(s, Err(LinkError::Refused(_))));
    }

    #[tokio::test]
    async fn a_master_without_the_key_is_refused_by_the_slave() {
        // A fake master that answers with a confirmation it cannot have computed.
        let k = ClusterKey::generate();
        let (mut a, mut b) = tokio::io::duplex(4096);
        let fake = async {
            write_frame(&mut a, 0, &Message::AuthChallenge { nonce: [7; 32] }).await.unwrap();
            expect_frame(&mut a).await.unwrap();
            write_frame(&mut a, 0, &Message::AuthConfirm { mac: [0; 32] }).await.unwrap();
        };
        let (_, s) = tokio::join!(fake, slave_handshake(&mut b, &k));
        assert!(matches!(s, Err(LinkError::AuthFailed)));
    }
}
