//! The two ways of building the image must build the same image: the
//! runtime stage of `deploy/Dockerfile` (multi-stage, for users) and
//! `deploy/docker/Dockerfile.scratch` (binaries compiled on the host; CI).

/// The lines after the runtime marker, with the source of copied files
/// (`--from=build /rootfs/…` or the context's `rootfs/…`) made alike.
fn runtime_stage(text: &str, replacements: &[(&str, &str)]) -> Vec<String> {
    let start = text
        .lines()
        .position(|l| l.trim() == "# --- runtime ---")
        .expect("a '# --- runtime ---' marker");
    text.lines()
        .skip(start + 1)
        .map(|l| {
            replacements
                .iter()
                .fold(l.to_string(), |l, (from, to)| l.replace(from, to))
        })
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[test]
fn both_dockerfiles_build_the_same_runtime_image() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let multi = std::fs::read_to_string(root.join("deploy/Dockerfile")).unwrap();
    let scratch = std::fs::read_to_string(root.join("deploy/docker/Dockerfile.scratch")).unwrap();
    let multi = runtime_stage(
        &multi,
        &[("--from=build ", ""), (" /rootfs/", " <rootfs>/")],
    );
    let scratch = runtime_stage(&scratch, &[(" rootfs/", " <rootfs>/")]);
    assert_eq!(multi, scratch);
    assert!(multi.iter().any(|l| l == "FROM scratch"), "{multi:?}");
    assert!(
        multi.iter().any(|l| l.starts_with("USER 65532")),
        "{multi:?}"
    );
}

/// Every service of the compose file that runs a server has a health check
/// through the binaries' own `healthcheck` subcommand, a restart policy, and
/// TLS settings.
#[test]
fn compose_services_have_health_checks_restart_and_tls() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compose = std::fs::read_to_string(root.join("deploy/docker-compose.yml")).unwrap();
    for (service, prefix) in [("kms-service", "KMS"), ("table-service", "TABLE")] {
        let block: String = compose
            .split("\n  ")
            .skip_while(|b| !b.starts_with(&format!("{service}:")))
            .take_while(|b| !b.starts_with("table-service:") || service == "table-service")
            .collect::<Vec<_>>()
            .join("\n  ");
        assert!(
            block.contains(&format!("[\"CMD\", \"{service}\", \"healthcheck\"]")),
            "{service}: no built-in health check"
        );
        assert!(
            block.contains(&format!("{prefix}_TLS_CERT")),
            "{service}: no TLS"
        );
    }
    assert!(compose.contains("restart: unless-stopped"));
    assert!(compose.contains("TABLE_KMS_ENDPOINT: https://kms-service:50051"));
}

/// A stop takes at most the drain deadline, the close grace and
/// table-service's wait for detached writes: less than the Compose
/// deployment's grace period, so no service is killed before it has closed
/// its store and audit log.
#[test]
fn a_stop_ends_within_the_compose_grace_period() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let compose = std::fs::read_to_string(root.join("deploy/docker-compose.yml")).unwrap();
    let grace: u64 = compose
        .lines()
        .find_map(|l| l.trim().strip_prefix("stop_grace_period: "))
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("stop_grace_period: <seconds>s in the compose file");
    let longest = lockbox_proto::shutdown::DRAIN_DEADLINE
        + lockbox_proto::shutdown::CLOSE_GRACE
        + table_service::service::WRITES_DEADLINE;
    assert!(
        longest + std::time::Duration::from_secs(5) <= std::time::Duration::from_secs(grace),
        "a stop may take {longest:?}, against a grace period of {grace} s"
    );
}
