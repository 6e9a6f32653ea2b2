//! Field codecs: how one field of a message (or of a process image's header) goes on the
//! wire, with the name its decode errors carry and the bounds its decoder checks.
//!
//! A type with a fixed layout implements [`Wire`]; a field is declared with a [`Codec`] value
//! next to it (`Text("path", MAX_PATH)`, `List("pids", MAX_NODES, 4, Int("pid"))`), so the
//! encoder and the decoder of a struct come from one list of fields ([`wire_struct!`]), those
//! of an enum from one list of kinds and fields ([`wire_enum!`]), and cannot drift apart.
//! Lists are checked against their limit and against the bytes left before anything is
//! allocated ([`Reader::count`]).
//!
//! [`wire_struct!`]: crate::wire_struct
//! [`wire_enum!`]: crate::wire_enum

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use crate::codec::{DecodeError, Reader, Writer};

/// A type that knows its own layout on the wire.
pub trait Wire: Sized {
    /// Appends `self`.
    fn put(&self, w: &mut Writer);
    /// Reads one value, checking every length and value.
    fn get(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
}

/// How a field of type `T` is written and read: the value carries what the encoding needs
/// besides the field (its name for errors, its bounds).
pub trait Codec<T> {
    /// Appends `v`.
    fn put(&self, v: &T, w: &mut Writer);
    /// Reads one value.
    fn get(&self, r: &mut Reader<'_>) -> Result<T, DecodeError>;
}

/// A big-endian integer the [`Writer`] and [`Reader`] know.
pub trait Prim: Copy {
    /// Appends it.
    fn write(self, w: &mut Writer);
    /// Reads one, named `what` in errors.
    fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError>;
    /// The value as [`DecodeError::BadValue`] reports it.
    fn value(self) -> u64;
}

macro_rules! prim {
    ($($t:ty => $m:ident),*) => {$(
        impl Prim for $t {
            fn write(self, w: &mut Writer) {
                w.$m(self);
            }
            fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
                r.$m(what)
            }
            fn value(self) -> u64 {
                self as u64
            }
        }
    )*};
}
prim!(u8 => u8, u16 => u16, u32 => u32, u64 => u64, i32 => i32);

/// Signed 64-bit values travel as their two's complement in a u64.
impl Prim for i64 {
    fn write(self, w: &mut Writer) {
        w.u64(self as u64);
    }
    fn read(r: &mut Reader<'_>, what: &'static str) -> Result<Self, DecodeError> {
        Ok(r.u64(what)? as i64)
    }
    fn value(self) -> u64 {
        self as u64
    }
}

/// An integer, named in errors.
#[derive(Debug, Clone, Copy)]
pub struct Int(pub &'static str);

impl<T: Prim> Codec<T> for Int {
    fn put(&self, v: &T, w: &mut Writer) {
        v.write(w);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<T, DecodeError> {
        T::read(r, self.0)
    }
}

/// An integer that must lie in a range; outside it is [`DecodeError::BadValue`].
#[derive(Debug, Clone)]
pub struct Within<T>(pub &'static str, pub RangeInclusive<T>);

impl<T: Prim + PartialOrd> Codec<T> for Within<T> {
    fn put(&self, v: &T, w: &mut Writer) {
        v.write(w);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<T, DecodeError> {
        let v = T::read(r, self.0)?;
        if !self.1.contains(&v) {
            return Err(DecodeError::BadValue { what: self.0, value: v.value() });
        }
        Ok(v)
    }
}

/// A u64 at the end of a body that an older peer leaves out: absent, it reads as 0.
#[derive(Debug, Clone, Copy)]
pub struct Trailing(pub &'static str);

impl Codec<u64> for Trailing {
    fn put(&self, v: &u64, w: &mut Writer) {
        w.u64(*v);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<u64, DecodeError> {
        if r.bytes_left() >= 8 {
            r.u64(self.0)
        } else {
            Ok(0)
        }
    }
}

/// A byte that must be 0 or 1.
#[derive(Debug, Clone, Copy)]
pub struct Flag(pub &'static str);

impl Codec<bool> for Flag {
    fn put(&self, v: &bool, w: &mut Writer) {
        w.u8(u8::from(*v));
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<bool, DecodeError> {
        match r.u8(self.0)? {
            0 => Ok(false),
            1 => Ok(true),
            v => Err(DecodeError::BadValue { what: self.0, value: v.into() }),
        }
    }
}

/// A UTF-8 string of at most `.1` bytes, after its u32 length.
#[derive(Debug, Clone, Copy)]
pub struct Text(pub &'static str, pub usize);

impl Codec<String> for Text {
    fn put(&self, v: &String, w: &mut Writer) {
        w.str(v);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<String, DecodeError> {
        r.str(self.0, self.1)
    }
}

/// Bytes, at most `.1` of them, after their u32 length.
#[derive(Debug, Clone, Copy)]
pub struct Bytes(pub &'static str, pub usize);

impl Codec<Vec<u8>> for Bytes {
    fn put(&self, v: &Vec<u8>, w: &mut Writer) {
        w.bytes(v);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<Vec<u8>, DecodeError> {
        Ok(r.bytes(self.0, self.1)?.to_vec())
    }
}

/// A fixed number of raw bytes (nonces, tokens, hashes), without a length.
#[derive(Debug, Clone, Copy)]
pub struct Fixed(pub &'static str);

impl<const N: usize> Codec<[u8; N]> for Fixed {
    fn put(&self, v: &[u8; N], w: &mut Writer) {
        w.fixed(v);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<[u8; N], DecodeError> {
        r.fixed(self.0)
    }
}

/// An IPv4 address: its four bytes.
#[derive(Debug, Clone, Copy)]
pub struct Addr(pub &'static str);

impl Codec<Ipv4Addr> for Addr {
    fn put(&self, v: &Ipv4Addr, w: &mut Writer) {
        w.fixed(&v.octets());
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<Ipv4Addr, DecodeError> {
        Ok(Ipv4Addr::from(r.fixed::<4>(self.0)?))
    }
}

/// A value that may be absent: a flag byte named `.0` (0 absent, 1 present), then the value.
#[derive(Debug, Clone, Copy)]
pub struct Opt<C>(pub &'static str, pub C);

impl<T, C: Codec<T>> Codec<Option<T>> for Opt<C> {
    fn put(&self, v: &Option<T>, w: &mut Writer) {
        match v {
            Some(v) => {
                w.u8(1);
                self.1.put(v, w);
            }
            None => w.u8(0),
        }
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<Option<T>, DecodeError> {
        match r.u8(self.0)? {
            0 => Ok(None),
            1 => Ok(Some(self.1.get(r)?)),
            v => Err(DecodeError::BadValue { what: self.0, value: v.into() }),
        }
    }
}

/// An address that may be left for the receiver to fill in (`None`: "the one you see").
pub const IP: Opt<Addr> = Opt("address flag", Addr("address"));

/// A value of a [`Wire`] type.
#[derive(Debug, Clone, Copy)]
pub struct Nested;

impl<T: Wire> Codec<T> for Nested {
    fn put(&self, v: &T, w: &mut Writer) {
        v.put(w);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<T, DecodeError> {
        T::get(r)
    }
}

/// A list: a u32 count named `.0`, at most `.1`, each element at least `.2` bytes on the
/// wire (so a count the bytes left cannot hold is refused before allocating), then the
/// elements, each with codec `.3`.
#[derive(Debug, Clone, Copy)]
pub struct List<C>(pub &'static str, pub usize, pub usize, pub C);

impl<T, C: Codec<T>> Codec<Vec<T>> for List<C> {
    fn put(&self, v: &Vec<T>, w: &mut Writer) {
        w.u32(v.len() as u32);
        for x in v {
            self.3.put(x, w);
        }
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<Vec<T>, DecodeError> {
        let n = r.count(self.0, self.1, self.2)?;
        let mut out = Vec::with_capacity(n);
        for _ in 0..n {
            out.push(self.3.get(r)?);
        }
        Ok(out)
    }
}

/// Exactly `.0` elements without a count (a thread's registers): the writer writes those it
/// has, the reader reads `.0`.
#[derive(Debug, Clone, Copy)]
pub struct Exactly<C>(pub usize, pub C);

impl<T, C: Codec<T>> Codec<Vec<T>> for Exactly<C> {
    fn put(&self, v: &Vec<T>, w: &mut Writer) {
        for x in v {
            self.1.put(x, w);
        }
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<Vec<T>, DecodeError> {
        (0..self.0).map(|_| self.1.get(r)).collect()
    }
}

/// Each element of an array, in order, without a count.
#[derive(Debug, Clone, Copy)]
pub struct Each<C>(pub C);

impl<T: Copy + Default, C: Codec<T>, const N: usize> Codec<[T; N]> for Each<C> {
    fn put(&self, v: &[T; N], w: &mut Writer) {
        for x in v {
            self.0.put(x, w);
        }
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<[T; N], DecodeError> {
        let mut out = [T::default(); N];
        for x in &mut out {
            *x = self.0.get(r)?;
        }
        Ok(out)
    }
}

/// A pair, one codec each, in order.
impl<A, B, CA: Codec<A>, CB: Codec<B>> Codec<(A, B)> for (CA, CB) {
    fn put(&self, v: &(A, B), w: &mut Writer) {
        self.0.put(&v.0, w);
        self.1.put(&v.1, w);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<(A, B), DecodeError> {
        Ok((self.0.get(r)?, self.1.get(r)?))
    }
}

/// A triple, one codec each, in order.
impl<A, B, C, CA: Codec<A>, CB: Codec<B>, CC: Codec<C>> Codec<(A, B, C)> for (CA, CB, CC) {
    fn put(&self, v: &(A, B, C), w: &mut Writer) {
        self.0.put(&v.0, w);
        self.1.put(&v.1, w);
        self.2.put(&v.2, w);
    }
    fn get(&self, r: &mut Reader<'_>) -> Result<(A, B, C), DecodeError> {
        Ok((self.0.get(r)?, self.1.get(r)?, self.2.get(r)?))
    }
}

/// Declares a struct whose fields go on the wire in the order written, each with its
/// [`Codec`]: `pub name: Type => codec,`. Implements [`Wire`] for it; attributes and doc
/// comments pass through.
///
/// ```
/// use bproc_proto::wire::{Int, Text, Wire};
/// bproc_proto::wire_struct! {
///     /// A named port.
///     #[derive(Debug, PartialEq)]
///     pub struct Service {
///         /// Its name.
///         pub name: String => Text("service name", 64),
///         /// Its port.
///         pub port: u16 => Int("service port"),
///     }
/// }
/// let mut w = bproc_proto::Writer::default();
/// Service { name: "ssh".into(), port: 22 }.put(&mut w);
/// let bytes = w.into_inner();
/// assert_eq!(bytes, [0, 0, 0, 3, b's', b's', b'h', 0, 22]);
/// let back = Service::get(&mut bproc_proto::Reader::new(&bytes)).unwrap();
/// assert_eq!(back, Service { name: "ssh".into(), port: 22 });
/// ```
#[macro_export]
macro_rules! wire_struct {
    (
        $(#[$m:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$fm:meta])* $fvis:vis $field:ident : $ty:ty => $codec:expr ),* $(,)?
        }
    ) => {
        $(#[$m])*
        $vis struct $name {
            $( $(#[$fm])* $fvis $field: $ty, )*
        }

        impl $crate::wire::Wire for $name {
            fn put(&self, w: &mut $crate::Writer) {
                $( $crate::wire::Codec::<$ty>::put(&$codec, &self.$field, w); )*
            }
            fn get(
                r: &mut $crate::Reader<'_>,
            ) -> ::core::result::Result<Self, $crate::DecodeError> {
                ::core::result::Result::Ok($name {
                    $( $field: $crate::wire::Codec::<$ty>::get(&$codec, r)?, )*
                })
            }
        }
    };
}

/// Declares an enum that goes on the wire as a kind byte, then the fields of that kind, each
/// with its [`Codec`]. The header names the kind byte in errors: `(read, refused)`, the name a
/// short byte gives and the one an unknown kind gives. Each variant is `KIND Name`, with
/// `(binding: Type => codec)` for a tuple variant (the binding names the value in the
/// encoder) or `{ field: Type => codec, ... }`. Implements [`Wire`] for it.
///
/// ```
/// use bproc_proto::wire::{Int, Text, Wire};
/// bproc_proto::wire_enum! {
///     /// Where to go.
///     #[derive(Debug, PartialEq)]
///     pub enum Place ("place kind", "place kind") {
///         /// Nowhere.
///         0 Nowhere,
///         /// A named town.
///         1 Town(name: String => Text("town", 64)),
///         /// A point.
///         2 Point {
///             /// Across.
///             x: u16 => Int("x"),
///             /// Up.
///             y: u16 => Int("y"),
///         },
///     }
/// }
/// let mut w = bproc_proto::Writer::default();
/// Place::Point { x: 1, y: 2 }.put(&mut w);
/// let bytes = w.into_inner();
/// assert_eq!(bytes, [2, 0, 1, 0, 2]);
/// assert_eq!(Place::get(&mut bproc_proto::Reader::new(&bytes)), Ok(Place::Point { x: 1, y: 2 }));
/// assert!(Place::get(&mut bproc_proto::Reader::new(&[3])).is_err());
/// ```
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$m:meta])*
        $vis:vis enum $name:ident ($kind:literal, $bad:literal) {
            $(
                $(#[$vm:meta])*
                $tag:literal $var:ident
                $( ( $( $bind:ident : $tty:ty => $tcodec:expr ),* $(,)? ) )?
                $( { $( $(#[$fm:meta])* $field:ident : $fty:ty => $fcodec:expr ),* $(,)? } )?
            ),* $(,)?
        }
    ) => {
        $(#[$m])*
        $vis enum $name {
            $(
                $(#[$vm])*
                $var $( ( $( $tty, )* ) )? $( { $( $(#[$fm])* $field: $fty, )* } )?,
            )*
        }

        impl $crate::wire::Wire for $name {
            fn put(&self, w: &mut $crate::Writer) {
                match self {
                    $(
                        $name::$var $( ( $( $bind ),* ) )? $( { $( $field ),* } )? => {
                            w.u8($tag);
                            $( $( $crate::wire::Codec::<$tty>::put(&$tcodec, $bind, w); )* )?
                            $( $( $crate::wire::Codec::<$fty>::put(&$fcodec, $field, w); )* )?
                        }
                    )*
                }
            }
            fn get(
                r: &mut $crate::Reader<'_>,
            ) -> ::core::result::Result<Self, $crate::DecodeError> {
                ::core::result::Result::Ok(match r.u8($kind)? {
                    $(
                        $tag => $name::$var
                            $( ( $( $crate::wire::Codec::<$tty>::get(&$tcodec, r)?, )* ) )?
                            $( { $( $field: $crate::wire::Codec::<$fty>::get(&$fcodec, r)?, )* } )?,
                    )*
                    v => {
                        return ::core::result::Result::Err($crate::DecodeError::BadValue {
                            what: $bad,
                            value: v.into(),
                        })
                    }
                })
            }
        }
    };
}
