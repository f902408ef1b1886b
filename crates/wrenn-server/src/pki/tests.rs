use super::*;

#[test]
fn the_ca_is_made_once_private_and_loaded_again() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    let ca = Ca::load_or_create(&pki).unwrap();
    let again = Ca::load_or_create(&pki).unwrap();
    assert_eq!(ca.fingerprint(), again.fingerprint());
    assert_eq!(Ca::load(&pki).unwrap().cert_pem(), ca.cert_pem());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(pki.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(matches!(
        Ca::load(&dir.path().join("none")),
        Err(PkiError::NoCa(_))
    ));
}

#[test]
fn a_crash_between_key_and_certificate_is_finished_from_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let pki = dir.path().join("pki");
    Ca::load_or_create(&pki).unwrap();
    let key_before = std::fs::read(pki.join("ca.key")).unwrap();
    std::fs::remove_file(pki.join("ca.pem")).unwrap();
    let ca = Ca::load_or_create(&pki).unwrap();
    assert_eq!(std::fs::read(pki.join("ca.key")).unwrap(), key_before);
    assert!(ca.cert_pem().contains("BEGIN CERTIFICATE"));
}

#[test]
fn an_agent_certificate_names_its_host_and_id_and_chains_to_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let (_key, csr) = new_key_and_csr().unwrap();
    let cert = ca
        .sign_agent_csr(&csr, "https://10.1.2.3:7443", "host-abc")
        .unwrap();
    tls::verify_agent_cert(ca.cert_pem(), &cert, "10.1.2.3").unwrap();
    assert!(tls::verify_agent_cert(ca.cert_pem(), &cert, "10.1.2.4").is_err());
    let der = first_cert_der(&cert).unwrap();
    assert_eq!(uri_sans(&der), vec!["urn:wrenn:host:host-abc".to_string()]);
    // Another CA does not vouch for it.
    let other = tempfile::tempdir().unwrap();
    let other = Ca::load_or_create(other.path()).unwrap();
    assert!(tls::verify_agent_cert(other.cert_pem(), &cert, "10.1.2.3").is_err());
    // A DNS name works too.
    let cert = ca
        .sign_agent_csr(&csr, "https://Agent-1.example:7443/", "host-abc")
        .unwrap();
    tls::verify_agent_cert(ca.cert_pem(), &cert, "agent-1.example").unwrap();
}

#[test]
fn bad_csrs_and_urls_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let (_key, csr) = new_key_and_csr().unwrap();
    for bad in [
        "",
        "hello",
        &csr.replace("MI", "XX"),
        &"A".repeat(MAX_CSR_BYTES + 1),
    ] {
        assert!(matches!(
            ca.sign_agent_csr(bad, "https://10.0.0.1:1", "h"),
            Err(PkiError::BadCsr)
        ));
    }
    for url in [
        "http://10.0.0.1:7443",
        "https://10.0.0.1",
        "https://10.0.0.1:0",
        "https://10.0.0.1:7443/x",
        "https://u@10.0.0.1:7443",
        "https://bad_host:7443",
        "https://:7443",
    ] {
        assert!(
            matches!(ca.sign_agent_csr(&csr, url, "h"), Err(PkiError::BadUrl(_))),
            "{url}"
        );
    }
    assert_eq!(advertised_host("https://[::1]:7443").unwrap(), "::1");
}

#[test]
fn the_control_plane_identity_has_the_role() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::load_or_create(dir.path()).unwrap();
    let id = ca.control_plane_identity().unwrap();
    let der = first_cert_der(&id.cert_pem).unwrap();
    assert_eq!(uri_sans(&der), vec![CONTROL_PLANE_ROLE.to_string()]);
    assert!(!format!("{id:?}").contains("PRIVATE"));
    // Not usable as an agent's (server) certificate.
    assert!(tls::verify_agent_cert(ca.cert_pem(), &id.cert_pem, "127.0.0.1").is_err());
}
