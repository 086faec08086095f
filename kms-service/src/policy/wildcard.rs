//! Glob matching for actions, resources and `StringLike` conditions: `*`
//! matches any run of characters (including none) and `?` exactly one.
//!
//! Policies are user input, so the matcher must not backtrack exponentially:
//! it remembers only the most recent `*`, which bounds the work by
//! pattern length × text length.

/// Case-sensitive glob match of `text` against `pattern`.
pub fn wildcard_match(pattern: &str, text: &str) -> bool {
    dispatch(pattern, text, false)
}

/// Glob match that folds ASCII letters only, as AWS does for action names.
pub fn wildcard_match_ignore_ascii_case(pattern: &str, text: &str) -> bool {
    dispatch(pattern, text, true)
}

fn dispatch(pattern: &str, text: &str, ignore_case: bool) -> bool {
    // Bytes are only safe when both sides are ASCII: otherwise `?` would
    // consume a single byte of a multi-byte character.
    if pattern.is_ascii() && text.is_ascii() {
        glob(pattern.as_bytes(), text.as_bytes(), b'*', b'?', |a, b| {
            a == b || (ignore_case && a.eq_ignore_ascii_case(&b))
        })
    } else {
        let pattern: Vec<char> = pattern.chars().collect();
        let text: Vec<char> = text.chars().collect();
        glob(&pattern, &text, '*', '?', |a, b| {
            a == b || (ignore_case && a.eq_ignore_ascii_case(&b))
        })
    }
}

fn glob<T: Copy + PartialEq>(
    pattern: &[T],
    text: &[T],
    star: T,
    any_one: T,
    eq: impl Fn(T, T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, 0);
    // (pattern index just after the latest `*`, text index that `*` will
    // swallow next when we backtrack). Older stars never need revisiting:
    // the latest one can absorb anything they could.
    let mut resume: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(t) {
        match pattern.get(p) {
            Some(&pc) if pc == star => {
                p += 1;
                resume = Some((p, t));
                continue;
            }
            Some(&pc) if pc == any_one || eq(pc, c) => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match resume {
            Some((after_star, swallowed)) => {
                p = after_star;
                t = swallowed + 1;
                resume = Some((after_star, swallowed + 1));
            }
            None => return false,
        }
    }
    pattern.iter().skip(p).all(|&pc| pc == star)
}
