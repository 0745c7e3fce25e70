//! `cargo xtask image`: a container image of leaktrace itself, made with
//! `docker import` (no registry, no base image): the binary, the libraries
//! `ldd` names, and leaktrace as the entry point. What
//! deploy/kubernetes/daemonset.yaml runs. The tests make theirs with the
//! same code (tests/src/docker.rs includes this file).

use std::{
    fs,
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

/// The image's name; the tag is the crate's version (and `latest`).
pub const IMAGE: &str = "leaktrace";

/// Makes `leaktrace:VERSION` and `leaktrace:latest` from `binary`.
#[allow(
    dead_code,
    reason = "the tests include this file and use build_as only"
)]
pub fn build(root: &Path, binary: &Path) -> Result<String> {
    let tag = format!("{IMAGE}:{}", env!("CARGO_PKG_VERSION"));
    build_as(&root.join("target/image/rootfs"), binary, &tag)?;
    let latest = format!("{IMAGE}:latest");
    let status = Command::new("/usr/bin/docker")
        .args(["tag", &tag, &latest])
        .status()
        .context("docker tag")?;
    if !status.success() {
        bail!("docker tag {tag} {latest} failed: {status}");
    }
    eprintln!("xtask: image {tag} (and {latest}) made; see deploy/kubernetes/daemonset.yaml");
    Ok(tag)
}

/// Makes image `tag` from `binary`, assembling its files in `rootfs`.
pub fn build_as(rootfs: &Path, binary: &Path, tag: &str) -> Result<()> {
    let _ = fs::remove_dir_all(rootfs);
    let bin_dir = rootfs.join("usr/local/bin");
    fs::create_dir_all(&bin_dir)?;
    // Mount points the engine fills, and a writable /tmp for --pprof-dir.
    for dir in ["proc", "sys", "dev", "etc", "tmp", "var/run"] {
        fs::create_dir_all(rootfs.join(dir))?;
    }
    fs::copy(binary, bin_dir.join("leaktrace")).context("copy leaktrace")?;
    let ldd = Command::new("ldd").arg(binary).output().context("ldd")?;
    for lib in String::from_utf8_lossy(&ldd.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let to = rootfs.join(lib.trim_start_matches('/'));
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::copy(lib, &to).with_context(|| format!("copy {lib}"))?;
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("tar")?;
    let status = Command::new("/usr/bin/docker")
        .args([
            "import",
            "--change",
            r#"ENTRYPOINT ["/usr/local/bin/leaktrace"]"#,
            "-",
            tag,
        ])
        .stdin(tar.stdout.take().context("tar's stdout")?)
        .stdout(Stdio::null())
        .status()
        .context("docker import (cargo xtask setup installs docker.io)")?;
    let tarred = tar.wait().context("tar")?;
    if !tarred.success() {
        bail!("tar of {} failed: {tarred}", rootfs.display());
    }
    if !status.success() {
        bail!("docker import {tag} failed: {status}");
    }
    Ok(())
}
