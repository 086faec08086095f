//! Test support: checks that the README's Errors table documents a reason
//! with the gRPC code the service answers it with, so the table stays true
//! as errors are added.

/// `SCREAMING_SNAKE` name of `code`, as the gRPC documentation spells it.
fn code_name(code: tonic::Code) -> String {
    let mut out = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// Panics unless `readme`'s Errors table has a row for `reason` naming
/// `code`.
pub fn assert_documented(readme: &str, reason: &str, code: tonic::Code) {
    let section = readme
        .split("\n## ")
        .find(|s| s.starts_with("Errors\n"))
        .expect("README.md has an Errors section");
    let cell = format!("`{reason}`");
    let row = section
        .lines()
        .find(|l| l.starts_with('|') && l.split('|').nth(1).is_some_and(|c| c.contains(&cell)))
        .unwrap_or_else(|| panic!("README.md's Errors table has no row for {reason}"));
    let name = format!("`{}`", code_name(code));
    assert!(
        row.split('|').nth(2).is_some_and(|c| c.contains(&name)),
        "README.md's Errors row for {reason} does not name {name}: {row}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_named_as_grpc_names_them() {
        assert_eq!(code_name(tonic::Code::Unauthenticated), "UNAUTHENTICATED");
        assert_eq!(
            code_name(tonic::Code::FailedPrecondition),
            "FAILED_PRECONDITION"
        );
        assert_eq!(code_name(tonic::Code::DataLoss), "DATA_LOSS");
    }

    #[test]
    fn a_missing_row_or_code_fails() {
        let readme = "# x\n\n## Errors\n\n| reason | gRPC code |\n|---|---|\n| `AException` | `NOT_FOUND` |\n\n## Next\n| `BException` | `NOT_FOUND` |\n";
        assert_documented(readme, "AException", tonic::Code::NotFound);
        for (reason, code) in [
            ("AException", tonic::Code::Internal),
            ("BException", tonic::Code::NotFound),
        ] {
            let caught = std::panic::catch_unwind(|| assert_documented(readme, reason, code));
            assert!(caught.is_err(), "{reason} {code:?}");
        }
    }
}
