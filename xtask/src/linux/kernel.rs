//! The lean Linux kernel (L1 and L2), built from Debian's `linux-source-6.1`
//! with the config fragment in tests/linux/kernel.config.
//!
//! The build is cached outside the clone, keyed by a hash of the fragment,
//! the source package's version and [`RECIPE`]: an unchanged input is never
//! rebuilt (a cold build is ~4 min at -j2; a warm one is a file check).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::{cache_dir, log, package_version, sha256_hex};
use crate::build::root;

/// Bump when the steps below change in a way that changes the result.
const RECIPE: &str = "kernel-recipe-1: tinyconfig + fragment, olddefconfig, bzImage";
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";

/// Debian packages the build needs: (package, a file it provides).
pub const BUILD_DEPS: &[(&str, &str)] = &[
    ("linux-source-6.1", SOURCE_TARBALL),
    ("flex", "/usr/bin/flex"),
    ("bison", "/usr/bin/bison"),
    ("libelf-dev", "/usr/include/libelf.h"),
    ("libssl-dev", "/usr/include/openssl/ssl.h"),
    ("bc", "/usr/bin/bc"),
    ("make", "/usr/bin/make"),
    ("gcc", "/usr/bin/gcc"),
    ("libc6-dev", "/usr/include/stdio.h"),
    ("xz-utils", "/usr/bin/xz"),
    ("lz4", "/usr/bin/lz4"),
];

pub fn fragment_path() -> PathBuf {
    root().join("tests/linux/kernel.config")
}

/// The built kernel and where it came from.
pub struct Kernel {
    pub bz_image: PathBuf,
    /// The full .config the kernel was built with.
    pub config: PathBuf,
    pub key: String,
}

/// The cache key: what the kernel is a function of.
pub fn key() -> Result<String, String> {
    let fragment =
        fs::read(fragment_path()).map_err(|e| format!("{}: {e}", fragment_path().display()))?;
    let version = package_version(SOURCE_PACKAGE)?;
    let mut input = fragment;
    input.extend_from_slice(format!("\n{SOURCE_PACKAGE} {version}\n{RECIPE}\n").as_bytes());
    Ok(sha256_hex(&input)?[..16].to_string())
}

/// The kernel, from the cache or built now.
pub fn ensure() -> Result<Kernel, String> {
    crate::deps::ensure(BUILD_DEPS)?;
    let key = key()?;
    let dir = cache_dir().join(format!("kernel-{key}"));
    let kernel = Kernel {
        bz_image: dir.join("bzImage"),
        config: dir.join("config"),
        key: key.clone(),
    };
    if kernel.bz_image.exists() {
        log(&format!(
            "kernel {key}: cached at {}",
            kernel.bz_image.display()
        ));
        return Ok(kernel);
    }
    build(&dir, &key)?;
    Ok(kernel)
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

fn make(src: &Path, args: &[&str], what: &str) -> Result<(), String> {
    run(
        Command::new("make")
            .current_dir(src)
            .args(args)
            .env_remove("MAKEFLAGS")
            .env_remove("MFLAGS"),
        what,
    )
}

fn build(dir: &Path, key: &str) -> Result<(), String> {
    let t0 = Instant::now();
    let work = dir.with_file_name(format!("kernel-{key}.build"));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    log(&format!(
        "kernel {key}: not cached; extracting {SOURCE_TARBALL} into {}",
        work.display()
    ));
    run(
        Command::new("tar")
            .arg("-xJf")
            .arg(SOURCE_TARBALL)
            .arg("-C")
            .arg(&work),
        "extracting the kernel source",
    )?;
    let src = work.join("linux-source-6.1");

    log(&format!(
        "kernel {key}: make tinyconfig + tests/linux/kernel.config + olddefconfig"
    ));
    make(&src, &["tinyconfig"], "make tinyconfig")?;
    let fragment = fs::read_to_string(fragment_path()).map_err(|e| e.to_string())?;
    let mut config = fs::read_to_string(src.join(".config")).map_err(|e| e.to_string())?;
    config = merge(&config, &fragment);
    fs::write(src.join(".config"), &config).map_err(|e| e.to_string())?;
    make(&src, &["olddefconfig"], "make olddefconfig")?;
    let result = fs::read_to_string(src.join(".config")).map_err(|e| e.to_string())?;
    let lost = missing(&result, &fragment);
    if !lost.is_empty() {
        // A symbol the kernel dropped (unmet dependency, renamed option)
        // would silently change what we test: refuse.
        return Err(format!(
            "kernel config: olddefconfig did not keep {} from tests/linux/kernel.config",
            lost.join(", ")
        ));
    }

    log(&format!(
        "kernel {key}: make -j2 bzImage (about 4 min on 2 cores)"
    ));
    make(&src, &["-j2", "bzImage"], "make bzImage")?;
    let staged = work.join("out");
    fs::create_dir_all(&staged).map_err(|e| e.to_string())?;
    fs::copy(src.join("arch/x86/boot/bzImage"), staged.join("bzImage"))
        .map_err(|e| e.to_string())?;
    fs::write(staged.join("config"), &result).map_err(|e| e.to_string())?;
    // Appear in the cache only when complete.
    let _ = fs::remove_dir_all(dir);
    fs::rename(&staged, dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _ = fs::remove_dir_all(&work);
    let size = fs::metadata(dir.join("bzImage"))
        .map(|m| m.len())
        .unwrap_or(0);
    log(&format!(
        "kernel {key}: built in {:.0} s, bzImage {} KiB",
        t0.elapsed().as_secs_f64(),
        size / 1024
    ));
    Ok(())
}

/// The symbol a config line sets: `CONFIG_X=...` or `# CONFIG_X is not set`.
fn symbol(line: &str) -> Option<&str> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# ") {
        return rest
            .strip_suffix(" is not set")
            .filter(|s| s.starts_with("CONFIG_"));
    }
    line.split_once('=')
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("CONFIG_"))
}

/// `base` with every symbol the fragment sets replaced by the fragment's line.
pub fn merge(base: &str, fragment: &str) -> String {
    let wanted: Vec<(&str, &str)> = fragment
        .lines()
        .filter_map(|l| Some((symbol(l)?, l.trim())))
        .collect();
    let mut out: Vec<String> = base
        .lines()
        .filter(|l| symbol(l).is_none_or(|s| !wanted.iter().any(|(w, _)| *w == s)))
        .map(String::from)
        .collect();
    out.extend(wanted.iter().map(|(_, l)| l.to_string()));
    out.join("\n") + "\n"
}

/// Fragment lines whose setting is not in the final config. `=n` and
/// "is not set" are the same thing; an unset symbol that is absent is fine.
pub fn missing(config: &str, fragment: &str) -> Vec<String> {
    let unset = |l: &str| l.ends_with(" is not set") || l.ends_with("=n");
    fragment
        .lines()
        .filter_map(|l| Some((symbol(l)?, l.trim())))
        .filter(|(sym, line)| {
            let have = config
                .lines()
                .find(|c| symbol(c) == Some(sym))
                .map(str::trim);
            match have {
                Some(h) => !(h == *line || unset(h) && unset(line)),
                None => !unset(line),
            }
        })
        .map(|(_, l)| l.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_and_checks_fragments() {
        let base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n# comment\n";
        let frag = "# why\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=4\n";
        let m = merge(base, frag);
        assert_eq!(
            m,
            "CONFIG_A=y\n# comment\nCONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=4\n"
        );
        assert!(missing(&m, frag).is_empty());
        let after = "CONFIG_A=y\nCONFIG_B=y\nCONFIG_D=8\n";
        assert_eq!(missing(after, frag), vec!["CONFIG_D=4".to_string()]);
        assert_eq!(
            missing("CONFIG_C=y\n", "# CONFIG_C is not set\n"),
            vec!["# CONFIG_C is not set".to_string()]
        );
    }

    #[test]
    fn the_fragment_parses() {
        let f = fs::read_to_string(fragment_path()).unwrap();
        assert!(f
            .lines()
            .filter_map(symbol)
            .any(|s| s == "CONFIG_KVM_INTEL"));
    }
}
