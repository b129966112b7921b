//! The gateway image, built here from this very binary: no base image and no registry.
//!
//! The build context is assembled in memory: the (stripped) gateway binary, exactly the
//! shared libraries `ldd` names (none for a static binary), an empty spool directory owned by
//! the image's user, and a `FROM scratch` Dockerfile. The engine's classic builder turns it
//! into `lockstock/gateway:<version>`. TLS roots are compiled into the binary.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::auth::DockerCredentials;
use bollard::query_parameters::{BuildImageOptions, CreateImageOptions};
use futures_util::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use super::Error;
use super::engine::{Engine, reason};
use super::{
    IMAGE_USER, LABEL_COMPONENT, LABEL_MANAGED, LABEL_VERSION, SETTINGS_IN_CONTAINER,
    SPOOL_IN_CONTAINER,
};

/// Where the binary sits in the image.
pub const BINARY_IN_IMAGE: &str = "/lockstock-gateway";

/// The image reference `start` runs by default.
pub fn default_image() -> String {
    format!("lockstock/gateway:{}", lockstock::VERSION)
}

/// What `image build` reports.
pub struct Built {
    pub tag: String,
    pub id: String,
    pub size: u64,
    pub libraries: usize,
    pub binary_size: u64,
    pub stripped: bool,
}

/// The shared libraries a dynamic binary loads, as `ldd` resolves them (the loader under its
/// absolute path); empty for a static binary.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>, String> {
    let mut head = Vec::new();
    std::io::Read::read_to_end(
        &mut std::io::Read::take(
            std::fs::File::open(binary)
                .map_err(|e| format!("reading {}: {e}", binary.display()))?,
            64 << 10,
        ),
        &mut head,
    )
    .map_err(|e| format!("reading {}: {e}", binary.display()))?;
    if !has_interpreter(&head)? {
        return Ok(Vec::new());
    }
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| format!("cannot run ldd to find the binary's libraries: {e}"))?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("not a dynamic executable") || text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        return Err(format!("ldd {} failed: {}", binary.display(), text.trim()));
    }
    parse_ldd(&text)
}

/// Whether an ELF64 little-endian executable names a program interpreter (PT_INTERP), i.e.
/// is dynamically linked. A static binary needs no `ldd` at all.
fn has_interpreter(elf: &[u8]) -> Result<bool, String> {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return Err("the gateway binary is not a 64-bit little-endian ELF executable".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[32..40].try_into().expect("8 bytes")) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let Some(kind) = elf.get(at..at + 4) else {
            return Err("the gateway binary's program headers are cut short".into());
        };
        if u32::from_le_bytes(kind.try_into().expect("4 bytes")) == PT_INTERP {
            return Ok(true);
        }
    }
    Ok(false)
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>, String> {
    let mut libs = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if line.contains("not found") {
            return Err(format!("a library the binary needs is missing: {line}"));
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)";
        // the vDSO ("linux-vdso.so.1 (0x…)") is the kernel's and has no file.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

/// A copy of `binary` with debug info and symbols stripped when `strip` is there; else the
/// binary itself. Returns (bytes, stripped).
fn stripped_binary(binary: &Path) -> Result<(Vec<u8>, bool), String> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()));
    let tmp = tempfile::Builder::new()
        .prefix("lockstock-gateway-strip-")
        .tempfile()
        .map_err(|e| format!("creating a temp file: {e}"))?;
    std::fs::copy(binary, tmp.path()).map_err(|e| format!("copying {}: {e}", binary.display()))?;
    match std::process::Command::new("strip")
        .arg(tmp.path())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok((read(tmp.path())?, true)),
        _ => Ok((read(binary)?, false)),
    }
}

/// A Dockerfile string literal.
fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// The Dockerfile of the image; `labels` are added to ours (one LABEL step in all).
pub fn dockerfile(labels: &[(String, String)]) -> String {
    let version = lockstock::VERSION;
    let mut all: Vec<(String, String)> = vec![
        (LABEL_MANAGED.into(), "true".into()),
        (LABEL_COMPONENT.into(), "gateway".into()),
        (LABEL_VERSION.into(), version.into()),
        (
            "org.opencontainers.image.title".into(),
            "LockStock gateway".into(),
        ),
        ("org.opencontainers.image.version".into(), version.into()),
    ];
    all.extend(labels.iter().cloned());
    let labels = all
        .iter()
        .map(|(k, v)| format!("{}={}", quoted(k), quoted(v)))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        r#"# LockStock gateway {version}: the gateway binary and the libraries it needs, nothing else.
FROM scratch
COPY rootfs/ /
COPY --chown={IMAGE_USER} spool/ {SPOOL_IN_CONTAINER}/
USER {IMAGE_USER}
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 CMD ["{BINARY_IN_IMAGE}", "healthcheck"]
LABEL {labels}
ENTRYPOINT ["{BINARY_IN_IMAGE}"]
CMD ["serve", "--settings", "{SETTINGS_IN_CONTAINER}"]
"#
    )
}

fn append_file(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    mode: u32,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, data)
}

fn append_dir(tar: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Directory);
    tar.append_data(&mut h, path, &[][..])
}

/// The build context: (tar bytes, number of libraries, binary size, stripped).
pub fn context(
    binary: &Path,
    labels: &[(String, String)],
) -> Result<(Vec<u8>, usize, u64, bool), String> {
    if labels
        .iter()
        .any(|(k, v)| k.contains('\n') || v.contains('\n'))
    {
        return Err("a label cannot contain a line break".into());
    }
    let libs = shared_libraries(binary)?;
    let (bin, stripped) = stripped_binary(binary)?;
    let bin_size = bin.len() as u64;
    let io = |e: std::io::Error| format!("assembling the build context: {e}");
    let mut tar = tar::Builder::new(Vec::with_capacity(bin.len() + (4 << 20)));
    append_file(&mut tar, "Dockerfile", dockerfile(labels).as_bytes(), 0o644).map_err(io)?;
    append_dir(&mut tar, "rootfs/", 0o755).map_err(io)?;
    append_file(&mut tar, "rootfs/lockstock-gateway", &bin, 0o755).map_err(io)?;
    drop(bin);
    // The mount point of the settings file.
    append_dir(&mut tar, "rootfs/run/", 0o755).map_err(io)?;
    append_dir(&mut tar, "rootfs/run/lockstock/", 0o755).map_err(io)?;
    for lib in &libs {
        let data = std::fs::read(lib)
            .map_err(|e| format!("reading the library {}: {e}", lib.display()))?;
        let rel = lib.to_string_lossy();
        append_file(
            &mut tar,
            &format!("rootfs/{}", rel.trim_start_matches('/')),
            &data,
            0o755,
        )
        .map_err(io)?;
    }
    append_dir(&mut tar, "spool/", 0o700).map_err(io)?;
    let bytes = tar.into_inner().map_err(io)?;
    Ok((bytes, libs.len(), bin_size, stripped))
}

fn bar(len: u64, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(len);
    pb.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb
}

/// `image build`: assembles the context, sends it (progress: load), builds (progress: steps),
/// tags, and reports the size.
pub async fn build(
    engine: &Engine,
    tag: &str,
    binary: &Path,
    labels: &[(String, String)],
) -> Result<Built, Error> {
    let fail = |reason: String| Error::Build {
        tag: tag.to_owned(),
        reason,
    };
    let (ctx, libraries, binary_size, stripped) =
        tokio::task::block_in_place(|| context(binary, labels)).map_err(&fail)?;
    let multi = MultiProgress::new();
    let load = multi.add(bar(
        ctx.len() as u64,
        "{prefix:>6} [{bar:30}] {bytes}/{total_bytes}",
    ));
    load.set_prefix("load");
    let steps = multi.add(bar(1, "{prefix:>6} [{bar:30}] {pos}/{len} {msg}"));
    steps.set_prefix("build");

    let chunks: Vec<bytes::Bytes> = bytes::Bytes::from(ctx)
        .chunks(256 << 10)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    let load_bar = load.clone();
    let body = futures_util::stream::iter(chunks).inspect(move |c| load_bar.inc(c.len() as u64));
    let options = BuildImageOptions {
        t: Some(tag.to_owned()),
        rm: true,
        forcerm: true,
        ..Default::default()
    };
    let mut stream = engine
        .docker
        .build_image(options, None, Some(bollard::body_stream(body)));
    let mut id = None;
    let mut tail: Vec<String> = Vec::new();
    while let Some(item) = stream.next().await {
        let info = match item {
            Ok(i) => i,
            Err(e) => {
                multi.clear().ok();
                let mut why = reason(&e);
                if !tail.is_empty() {
                    why = format!("{why} (last output: {})", tail.join(" | "));
                }
                return Err(fail(why));
            }
        };
        load.finish();
        if let Some(s) = info.stream.as_deref() {
            let line = s.trim();
            // "Step 2/7 : COPY rootfs/ /"
            if let Some(rest) = line.strip_prefix("Step ")
                && let Some((n, rest)) = rest.split_once('/')
                && let Some((m, what)) = rest.split_once(" : ")
                && let (Ok(n), Ok(m)) = (n.parse::<u64>(), m.parse::<u64>())
            {
                steps.set_length(m);
                steps.set_position(n.saturating_sub(1));
                steps.set_message(what.chars().take(40).collect::<String>());
            }
            if !line.is_empty() {
                tail.push(line.to_owned());
                if tail.len() > 3 {
                    tail.remove(0);
                }
            }
        }
        if let Some(aux) = info.aux.and_then(|a| a.id) {
            id = Some(aux);
        }
    }
    steps.set_position(steps.length().unwrap_or(1));
    steps.finish();
    multi.clear().ok();
    let inspect = engine.docker.inspect_image(tag).await.map_err(|e| {
        fail(format!(
            "the engine has no {tag} after the build: {}",
            reason(&e)
        ))
    })?;
    Ok(Built {
        tag: tag.to_owned(),
        id: id.or(inspect.id).unwrap_or_default(),
        size: inspect.size.unwrap_or(0).max(0) as u64,
        libraries,
        binary_size,
        stripped,
    })
}

/// The registry part of an image reference (`docker.io` when it names none).
pub fn registry_of(reference: &str) -> String {
    match reference.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first.to_owned()
        }
        _ => "docker.io".to_owned(),
    }
}

/// `image pull`: pulls through the engine, with registry credentials given only to this API
/// call (nothing is written to ~/.docker). Progress: one bar per layer.
pub async fn pull(
    engine: &Engine,
    reference: &str,
    credentials: Option<(zeroize::Zeroizing<String>, zeroize::Zeroizing<String>)>,
) -> Result<(), Error> {
    let registry = registry_of(reference);
    let creds = credentials.map(|(user, token)| DockerCredentials {
        username: Some(user.as_str().to_owned()),
        password: Some(token.as_str().to_owned()),
        serveraddress: Some(registry.clone()),
        ..Default::default()
    });
    let authenticated = creds.is_some();
    let options = CreateImageOptions {
        from_image: Some(reference.to_owned()),
        ..Default::default()
    };
    let multi = MultiProgress::new();
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut stream = engine.docker.create_image(Some(options), None, creds);
    let fail = |why: String| {
        let lower = why.to_ascii_lowercase();
        let reason = if lower.contains("unauthorized")
            || lower.contains("denied")
            || lower.contains("authentication required")
        {
            if authenticated {
                format!(
                    "the registry {registry} refused the credentials LOCKSTOCK_REGISTRY_USER / LOCKSTOCK_REGISTRY_TOKEN ({why})"
                )
            } else {
                format!(
                    "the registry {registry} wants credentials: `liberty add LOCKSTOCK_REGISTRY_USER` and `liberty add LOCKSTOCK_REGISTRY_TOKEN` ({why})"
                )
            }
        } else {
            format!(
                "the engine could not fetch it from {registry} ({why}); without a registry, build the image here with `lockstock-gateway image build`"
            )
        };
        Error::Pull {
            image: reference.to_owned(),
            reason,
        }
    };
    let overall = tokio::time::timeout(Duration::from_secs(3600), async {
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| fail(reason(&e)))?;
            let (Some(id), Some(status)) = (info.id.as_deref(), info.status.as_deref()) else {
                continue;
            };
            let pb = bars.entry(id.to_owned()).or_insert_with(|| {
                let pb = multi.add(bar(
                    0,
                    "{prefix:>12} {msg:<12} [{bar:30}] {bytes}/{total_bytes}",
                ));
                pb.set_prefix(id.chars().take(12).collect::<String>());
                pb
            });
            pb.set_message(status.to_owned());
            if let Some(d) = &info.progress_detail
                && let (Some(cur), Some(total)) = (d.current, d.total)
            {
                pb.set_length(total.max(0) as u64);
                pb.set_position(cur.max(0) as u64);
            }
            if status.starts_with("Pull complete") || status.starts_with("Already exists") {
                pb.finish();
            }
        }
        Ok::<(), Error>(())
    })
    .await;
    multi.clear().ok();
    match overall {
        Ok(r) => r,
        Err(_) => Err(fail("no progress within an hour".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_the_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so.1 => not found\n").is_err());
    }

    #[test]
    fn labels_are_quoted_into_one_label_step() {
        let d = dockerfile(&[("a.b".into(), "say \"hi\" \\o/".into())]);
        assert_eq!(d.matches("LABEL ").count(), 1);
        assert!(d.contains(r#""a.b"="say \"hi\" \\o/""#), "{d}");
        assert!(d.contains(r#""io.lockstock.managed"="true""#));
    }

    #[test]
    fn dynamic_and_static_binaries_are_told_apart() {
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // The test binary is linked like the gateway: dynamically, against glibc.
        assert!(has_interpreter(&me).unwrap());
        // An ELF header with no program headers at all is static.
        let mut elf = me[..64].to_vec();
        elf[56] = 0;
        elf[57] = 0;
        assert!(!has_interpreter(&elf).unwrap());
        assert!(has_interpreter(b"#!/bin/sh\n").is_err());
    }

    #[test]
    fn registry_is_read_from_the_reference() {
        assert_eq!(registry_of("lockstock/gateway:1"), "docker.io");
        assert_eq!(registry_of("ghcr.io/acme/gateway:1"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/gateway"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/gateway"), "localhost");
        assert_eq!(registry_of("gateway"), "docker.io");
    }
}
