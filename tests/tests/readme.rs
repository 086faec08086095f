//! The README's commands are the ones the tests run: every line of its `sh`
//! blocks is either one of the scripts CI runs or a line of
//! `deploy/walkthrough.sh` (which the test suite runs against fresh servers)
//! or of `deploy/compose-test.sh` (which CI runs against the Docker Compose
//! deployment, on its own published ports).

fn normalize(line: &str) -> String {
    let line = line
        .trim()
        .trim_start_matches("out=$(")
        .replace("\"$KMS_BIN\"", "target/release/kms-service")
        .replace("\"$DATA/", "data/kms-service/")
        .replace(".jsonl\"", ".jsonl")
        .replace(".key\"", ".key")
        .replace("localhost:$KMS_PORT", "localhost:50051");
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[test]
fn every_readme_command_is_exercised() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let mut script_lines: Vec<String> = Vec::new();
    for script in ["deploy/walkthrough.sh", "deploy/compose-test.sh"] {
        let text = std::fs::read_to_string(root.join(script)).expect(script);
        script_lines.extend(text.lines().map(normalize));
    }
    // Run by .ci/run directly, or set-up lines whose values the script takes
    // from its environment.
    let run_by_ci = [
        "deploy/run-local.sh",
        "deploy/test.sh",
        "KMS=",
        "ADMIN=$(cat data/kms-service/admin.token)",
        "TABLE=",
        "USER_NAME=",
    ];
    let mut in_sh = false;
    let mut checked = 0;
    for line in readme.lines() {
        if line.starts_with("```") {
            in_sh = line == "```sh";
            continue;
        }
        if !in_sh || line.trim().is_empty() {
            continue;
        }
        if run_by_ci.iter().any(|p| line.starts_with(p)) {
            for script in ["deploy/run-local.sh", "deploy/test.sh"] {
                if line.starts_with(script) {
                    assert!(root.join(script).exists(), "{script} is missing");
                }
            }
            continue;
        }
        let wanted = normalize(line);
        assert!(
            script_lines.iter().any(|l| l.contains(&wanted)),
            "README line is in neither deploy/walkthrough.sh nor deploy/compose-test.sh: {line}"
        );
        checked += 1;
    }
    assert!(checked >= 15, "only {checked} README lines checked");
}
