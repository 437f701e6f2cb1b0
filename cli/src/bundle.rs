//! `corral bundle create`: one file with everything a site with no network needs — the agent, the
//! coordinator and the CLI for this architecture, the install and uninstall scripts, the deployment
//! files and, optionally, images. The install script installs from it (`--bundle FILE`) and
//! checks it against the `SHA256SUMS` inside.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

type Out<'a> = &'a mut (dyn Write + Send);

const INSTALL_SH: &str = include_str!("../../deploy/install.sh");
const UNINSTALL_SH: &str = include_str!("../../deploy/uninstall.sh");
const COORDINATOR_UNIT: &str = include_str!("../../deploy/corral-coordinator.service");
const COMPOSE: &str = include_str!("../../deploy/compose.yaml");
const BINARIES: [&str; 3] = ["corral-agent", "corral-coordinator", "corral"];

fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        digest.update(&buf[..n]);
    }
    Ok(digest.finish().as_ref().iter().map(|b| format!("{b:02x}")).collect())
}

/// A file name for an image's tarball: `team/app:1` → `team_app_1.tar`.
fn image_file(image: &str) -> String {
    let safe: String =
        image.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect();
    format!("{safe}.tar")
}

pub fn create(output: &Path, bin_dir: Option<PathBuf>, images: &[String], out: Out<'_>) -> anyhow::Result<i32> {
    let bin_dir = match bin_dir {
        Some(d) => d,
        None => std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .context("cannot tell where this program is: use --bin-dir DIR")?,
    };
    for name in BINARIES {
        if !bin_dir.join(name).is_file() {
            bail!(
                "{} is missing: --bin-dir must name a directory with corral, corral-agent and corral-coordinator (a Corral release)",
                bin_dir.join(name).display()
            );
        }
    }
    let root = format!("corral-{}", env!("CARGO_PKG_VERSION"));
    let arch = std::env::consts::ARCH;
    let staging = tempfile::tempdir().context("cannot make a temporary directory")?;

    // (path in the bundle, file on disk, executable)
    let mut files: Vec<(String, PathBuf, bool)> = Vec::new();
    for name in BINARIES {
        files.push((format!("bin/{arch}/{name}"), bin_dir.join(name), true));
    }
    for (name, text, exec) in [
        ("install.sh", INSTALL_SH, true),
        ("uninstall.sh", UNINSTALL_SH, true),
        ("deploy/corral-coordinator.service", COORDINATOR_UNIT, false),
        ("deploy/compose.yaml", COMPOSE, false),
    ] {
        let path = staging.path().join(name.replace('/', "_"));
        std::fs::write(&path, text)?;
        files.push((name.to_owned(), path, exec));
    }
    for image in images {
        let path = staging.path().join(image_file(image));
        let saved = std::process::Command::new("docker")
            .args(["save", "-o"])
            .arg(&path)
            .arg(image)
            .output()
            .context("cannot run `docker save` (is the docker CLI installed?)")?;
        if !saved.status.success() {
            bail!("docker save {image} failed: {}", String::from_utf8_lossy(&saved.stderr).trim());
        }
        files.push((format!("images/{}", image_file(image)), path, false));
    }

    let mut sums = String::new();
    for (name, path, _) in &files {
        sums.push_str(&format!("{}  {name}\n", sha256_file(path)?));
    }
    let sums_path = staging.path().join("SHA256SUMS");
    std::fs::write(&sums_path, &sums)?;
    files.push(("SHA256SUMS".to_owned(), sums_path, false));

    let file = std::fs::File::create(output).with_context(|| format!("cannot write {}", output.display()))?;
    let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    for (name, path, exec) in &files {
        let mut f = std::fs::File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut header = tar::Header::new_gnu();
        header.set_size(f.metadata()?.len());
        header.set_mode(if *exec { 0o755 } else { 0o644 });
        header.set_mtime(0);
        header.set_cksum();
        tar.append_data(&mut header, format!("{root}/{name}"), &mut f)
            .with_context(|| format!("cannot add {name} to {}", output.display()))?;
    }
    tar.into_inner()?.finish()?.flush()?;

    let size = std::fs::metadata(output)?.len();
    writeln!(
        out,
        "wrote {} ({:.1} MiB): agent, coordinator and CLI for {arch}, {} image(s)",
        output.display(),
        size as f64 / (1 << 20) as f64,
        images.len()
    )?;
    writeln!(
        out,
        "on each host (as root): tar -xzf {0} {root}/install.sh && sh {root}/install.sh --bundle {0} --url https://COORDINATOR:7070 --token TOKEN",
        output.display()
    )?;
    if !images.is_empty() {
        writeln!(
            out,
            "then store the images in the coordinator: corral image push --shared --file {root}/images/<image>.tar"
        )?;
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn image_files_are_plain_names() {
        assert_eq!(super::image_file("team/app:1"), "team_app_1.tar");
        assert_eq!(super::image_file("reg:5000/a/b@sha256:ab"), "reg_5000_a_b_sha256_ab.tar");
    }
}
