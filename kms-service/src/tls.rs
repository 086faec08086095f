//! TLS for kms-service: the shared loading and checking of PEM files and
//! the tonic configurations (re-exported from `lockbox_proto::transport`),
//! and `tls-init`, which makes a private CA and the services' certificates
//! with `rcgen`.

use std::path::{Path, PathBuf};

pub use lockbox_proto::transport::*;

fn err(message: String) -> TlsConfigError {
    TlsConfigError(message)
}

// ---------------------------------------------------------------------------
// ---------------------------------------------------------------------------
// tls-init

/// What `tls-init` did.
#[derive(Debug)]
pub enum InitOutcome {
    /// `ca.crt` already existed: nothing was written.
    AlreadyInitialised { ca_cert: PathBuf },
    /// The files written, in order, each with a description.
    Written(Vec<(PathBuf, &'static str)>),
}

const LEAF_VALIDITY_DAYS: i64 = 825;
const CA_VALIDITY_DAYS: i64 = 3650;

/// Creates a private CA (`ca.crt`, `ca.key`) and, signed by it,
/// `kms-service.crt`/`.key` and `table-service.crt`/`.key` in `out_dir`
/// (ECDSA P-256, PEM, keys mode 0600). Both leaf certificates carry the
/// serverAuth and clientAuth extended key usages, so each service can also
/// be the mutual-TLS client of the other (and of its own healthcheck).
/// Does nothing when `ca.crt` exists.
pub fn init(out_dir: &Path, hosts: &[String]) -> Result<InitOutcome, TlsConfigError> {
    init_split(out_dir, None, None, hosts)
}

/// As [`init`], but each service's certificate and key (with a copy of
/// `ca.crt`) go to a directory of their own when one is given, so that a
/// deployment can hand each service only its own key and keep the CA's key
/// where no service sees it. `out_dir` gets `ca.key` and `ca.crt` (written
/// last: its presence means everything was written).
pub fn init_split(
    out_dir: &Path,
    kms_dir: Option<&Path>,
    table_dir: Option<&Path>,
    hosts: &[String],
) -> Result<InitOutcome, TlsConfigError> {
    let ca_cert_path = out_dir.join("ca.crt");
    if ca_cert_path.exists() {
        return Ok(InitOutcome::AlreadyInitialised {
            ca_cert: ca_cert_path,
        });
    }
    for dir in [Some(out_dir), kms_dir, table_dir].into_iter().flatten() {
        std::fs::create_dir_all(dir).map_err(|e| {
            err(format!(
                "cannot create the directory {}: {e}",
                dir.display()
            ))
        })?;
    }
    let rc = |e: rcgen::Error| err(format!("cannot generate a certificate: {e}"));
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);

    let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
    let mut ca_params = rcgen::CertificateParams::default();
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Lockbox private CA");
    ca_params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, "Lockbox");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    let ca_key_pem = ca_key.serialize_pem();
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).map_err(rc)?;

    let mut written = Vec::new();
    write_file(&out_dir.join("ca.key"), &ca_key_pem, true)?;
    written.push((
        out_dir.join("ca.key"),
        "private key of the CA (keep it offline)",
    ));
    let mut leaf_dirs = Vec::new();
    for (service, dir) in [("kms-service", kms_dir), ("table-service", table_dir)] {
        let dir = dir.unwrap_or(out_dir);
        let mut names = vec![
            service.to_string(),
            "localhost".to_string(),
            "127.0.0.1".to_string(),
        ];
        for host in hosts {
            if !names.contains(host) {
                names.push(host.clone());
            }
        }
        let mut params = rcgen::CertificateParams::new(names)
            .map_err(|e| err(format!("invalid --host name: {e}")))?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, service);
        params.is_ca = rcgen::IsCa::ExplicitNoCa;
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = now + time::Duration::days(LEAF_VALIDITY_DAYS);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(rc)?;
        let cert = params.signed_by(&key, &*ca).map_err(rc)?;
        let cert_path = dir.join(format!("{service}.crt"));
        let key_path = dir.join(format!("{service}.key"));
        if dir != out_dir {
            leaf_dirs.push(dir.to_path_buf());
        }
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &cert.pem(), false)?;
        written.push((cert_path, "certificate (serverAuth, clientAuth)"));
        written.push((key_path, "private key"));
    }
    for dir in leaf_dirs {
        let copy = dir.join("ca.crt");
        write_file(&copy, &ca.pem(), false)?;
        written.push((copy, "CA certificate (copy)"));
    }
    // ca.crt last: its presence means everything was written.
    write_file(&ca_cert_path, &ca.pem(), false)?;
    written.insert(0, (ca_cert_path, "CA certificate (give it to clients)"));
    Ok(InitOutcome::Written(written))
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsConfigError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    }
    let fail = |e: std::io::Error| err(format!("cannot write {}: {e}", path.display()));
    let mut file = options.open(path).map_err(fail)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &Path) -> ConfigFile<'_> {
        ConfigFile {
            path,
            flag: "--tls-cert",
            env: "KMS_TLS_CERT",
        }
    }

    #[test]
    fn init_writes_a_ca_and_leaf_certificates_that_load_and_pair() {
        let dir = tempfile::tempdir().unwrap();
        let InitOutcome::Written(files) = init(dir.path(), &["kms.example".into()]).unwrap() else {
            panic!("expected files to be written");
        };
        assert_eq!(files.len(), 6);
        for service in ["kms-service", "table-service"] {
            let cert = dir.path().join(format!("{service}.crt"));
            let key = dir.path().join(format!("{service}.key"));
            load_identity(file(&cert), file(&key)).unwrap();
        }
        load_ca(file(&dir.path().join("ca.crt"))).unwrap();
        assert!(matches!(
            init(dir.path(), &[]).unwrap(),
            InitOutcome::AlreadyInitialised { .. }
        ));
    }

    #[test]
    fn init_split_gives_each_service_only_its_own_key() {
        let root = tempfile::tempdir().unwrap();
        let (ca, kms, table) = (
            root.path().join("ca"),
            root.path().join("kms"),
            root.path().join("table"),
        );
        init_split(&ca, Some(&kms), Some(&table), &[]).unwrap();
        let names = |dir: &Path| {
            let mut names: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        assert_eq!(names(&ca), ["ca.crt", "ca.key"]);
        assert_eq!(
            names(&kms),
            ["ca.crt", "kms-service.crt", "kms-service.key"]
        );
        assert_eq!(
            names(&table),
            ["ca.crt", "table-service.crt", "table-service.key"]
        );
        for (dir, service) in [(&kms, "kms-service"), (&table, "table-service")] {
            load_identity(
                file(&dir.join(format!("{service}.crt"))),
                file(&dir.join(format!("{service}.key"))),
            )
            .unwrap();
            assert_eq!(
                std::fs::read(dir.join("ca.crt")).unwrap(),
                std::fs::read(ca.join("ca.crt")).unwrap()
            );
        }
    }

    #[test]
    fn a_key_from_another_pair_is_refused_as_a_mismatch() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        init(a.path(), &[]).unwrap();
        init(b.path(), &[]).unwrap();
        let cert = a.path().join("kms-service.crt");
        let key = b.path().join("kms-service.key");
        let e = load_identity(file(&cert), file(&key)).unwrap_err();
        assert!(e.0.contains("does not match"), "{e}");
    }

    #[test]
    fn a_key_file_given_as_certificate_has_no_certificate() {
        let a = tempfile::tempdir().unwrap();
        init(a.path(), &[]).unwrap();
        let key = a.path().join("kms-service.key");
        let e = load_certificates(file(&key), "certificate").unwrap_err();
        assert!(e.0.contains("no PEM certificate"), "{e}");
    }
}
