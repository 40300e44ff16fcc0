//! Certificates for the TLS tests, made by the `openssl` command line (EC P-256, valid 2 days).

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl").args(args).current_dir(dir).output().context("openssl is needed for the TLS tests")?;
    ensure!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

/// `openssl req` making a new EC P-256 key `name.key` and writing `out` (`-x509`: self-signed).
fn request(dir: &Path, name: &str, x509: bool, out: &str) -> Result<()> {
    let (key, subject) = (format!("{name}.key"), format!("/CN={name}"));
    let mut args = vec!["req"];
    if x509 {
        args.extend(["-x509", "-days", "2"]);
    }
    args.extend(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", &key, "-out", out, "-subj", &subject]);
    openssl(dir, &args)
}

/// A self-signed CA (`name.crt`, `name.key`) in `dir`.
pub fn ca(dir: &Path, name: &str) -> Result<()> {
    request(dir, name, true, &format!("{name}.crt"))
}

/// A certificate `name.crt` / `name.key` signed by CA `ca`, with X.509v3 extensions `ext`
/// (e.g. `subjectAltName=DNS:localhost`).
pub fn leaf(dir: &Path, ca: &str, name: &str, ext: &str) -> Result<()> {
    request(dir, name, false, &format!("{name}.csr"))?;
    std::fs::write(dir.join(format!("{name}.ext")), ext)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{name}.csr"),
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{name}.crt"),
            "-days",
            "2",
            "-extfile",
            &format!("{name}.ext"),
        ],
    )
}
