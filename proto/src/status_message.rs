//! A bound on the message of every error status the services send.
//!
//! A status message travels twice in the answer's trailers: percent-encoded
//! in `grpc-message` (a space or a non-ASCII byte takes three bytes) and
//! again, base64-encoded, inside `grpc-status-details-bin`. Clients bound
//! the trailers they accept (hyper's client: 16 KiB; the C core behind
//! grpcio and others: 8 KiB by default) and fail the call with a transport
//! error, or the whole connection, past it. Messages name what the caller
//! sent (attribute names, key ids, policy text), so one built from a long
//! input is cut here: [`MAX_BYTES`] keeps both copies under 5 KiB.

/// The most bytes of a status message that are sent as they are.
pub const MAX_BYTES: usize = 1024;

/// `message`, or its first [`MAX_BYTES`] bytes (at a character boundary)
/// and a note of how long it was.
pub fn bounded(message: String) -> String {
    if message.len() <= MAX_BYTES {
        return message;
    }
    let mut end = MAX_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (message cut; it was {} bytes)",
        &message[..end],
        message.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_are_kept_whole() {
        let message = "x".repeat(MAX_BYTES);
        assert_eq!(bounded(message.clone()), message);
        assert_eq!(bounded(String::new()), "");
    }

    #[test]
    fn long_messages_are_cut_at_a_character_boundary_and_say_so() {
        let cut = bounded("a".repeat(100_000));
        assert_eq!(
            cut,
            format!(
                "{}… (message cut; it was 100000 bytes)",
                "a".repeat(MAX_BYTES)
            )
        );
        // A three-byte character straddling the bound is left out whole.
        let message = format!("{}€{}", "a".repeat(MAX_BYTES - 1), "b".repeat(10));
        let cut = bounded(message);
        assert!(
            cut.starts_with(&format!("{}…", "a".repeat(MAX_BYTES - 1))),
            "{cut}"
        );
        assert!(cut.ends_with(&format!("it was {} bytes)", MAX_BYTES + 12)));
    }
}
