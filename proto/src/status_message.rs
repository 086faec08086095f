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

/// How long a name the caller sent may be before [`abbreviate`] shortens
/// it.
pub const NAME_BYTES: usize = 64;

/// Shortens user-supplied text before it is echoed in a message or a
/// record: its first [`NAME_BYTES`] bytes (at a character boundary) and
/// its length, so a 400 KiB attribute name or a made-up grant id cannot
/// blow up logs, records and answers.
pub fn abbreviate(text: &str) -> String {
    if text.len() <= NAME_BYTES {
        return text.to_owned();
    }
    let mut end = NAME_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &text[..end], text.len())
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

    #[test]
    fn names_are_abbreviated_past_64_bytes() {
        assert_eq!(abbreviate("short"), "short");
        let name = "n".repeat(NAME_BYTES);
        assert_eq!(abbreviate(&name), name);
        assert_eq!(
            abbreviate(&"n".repeat(100)),
            format!("{}… (100 bytes)", "n".repeat(NAME_BYTES))
        );
        // "é" is two bytes: one straddling the bound is left out whole.
        let name = format!("{}é", "n".repeat(NAME_BYTES - 1));
        assert_eq!(
            abbreviate(&name),
            format!("{}… (65 bytes)", "n".repeat(NAME_BYTES - 1))
        );
    }
}
