//! Throwaway certificates for the TLS tests (PostgreSQL's and Redis's), made with the `openssl`
//! command-line tool.

use std::path::Path;
use std::process::{Command, Stdio};

/// Writes into `dir` a self-signed certificate authority (`root.crt`, `ca.key`) and a server
/// certificate it signed for `localhost` and 127.0.0.1 (`server.crt`, `server.key`, mode 600),
/// valid for two days. Returns `false`, leaving no `server.crt`, when `openssl` is missing or
/// fails (the caller then runs its server without TLS, and its TLS test says so).
///
/// # Errors
/// A message if `dir` cannot be written.
pub fn certificates(dir: &Path) -> Result<bool, String> {
    let openssl = |args: &[&str]| {
        Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    };
    let extensions = dir.join("server.ext");
    std::fs::write(
        &extensions,
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .map_err(|e| format!("write {}: {e}", extensions.display()))?;
    let made = openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=tollgate-test-ca",
        "-keyout",
        "ca.key",
        "-out",
        "root.crt",
    ]) && openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]) && openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "root.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    if !made {
        let _ = std::fs::remove_file(dir.join("server.crt"));
        return Ok(false);
    }
    let _ = Command::new("chmod")
        .arg("600")
        .arg(dir.join("server.key"))
        .status();
    Ok(true)
}
