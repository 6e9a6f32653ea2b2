//! A refused request: an errno-style code and a message, as both daemons answer one.
//!
//! The master (a client's request, a node change) and the slave (a launch, a copy) refuse
//! with the same two things the wire's [`Message::Error`] carries, so they share this type.

use std::fmt;

use crate::Message;

/// A refused request: an errno or `BE_*` code and a message naming the node, pid or path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// errno or `BE_*` value.
    pub code: i32,
    /// What went wrong, and how to fix it where that is known.
    pub message: String,
}

impl Refusal {
    /// A refusal with `code` and `message`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Refusal { code, message: message.into() }
    }

    /// The reply that carries this refusal to the requester.
    pub fn to_message(&self) -> Message {
        Message::Error { code: self.code, message: self.message.clone() }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Refusal {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_becomes_an_error_reply() {
        let r = Refusal::new(crate::errno::EPERM, "node 3: permission denied");
        assert_eq!(r.to_string(), "node 3: permission denied");
        assert_eq!(
            r.to_message(),
            Message::Error {
                code: crate::errno::EPERM,
                message: "node 3: permission denied".into()
            }
        );
    }
}
