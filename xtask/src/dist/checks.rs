//! Checks of the built artifacts by the real tools: `file`, shellcheck,
//! `systemd-analyze security`, lintian, rpmlint, dpkg-deb and rpm queries,
//! skopeo and oci-image-tool, and the OCI image running under podman.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::{Ctx, binary, oci};
use crate::sh;

/// Highest acceptable `systemd-analyze security` exposure of the unit.
const MAX_EXPOSURE: f64 = 2.0;
/// How long the container may take to exit after SIGTERM.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

pub fn all(ctx: &Ctx) -> Result<()> {
    for name in ctx.artifact_names() {
        let path = ctx.dist.join(&name);
        ensure!(path.is_file(), "{} is missing; run `cargo xtask dist` first", path.display());
    }
    sh::stage("check tools", || {
        sh::ensure_apt(&[
            ("file", "file"),
            ("shellcheck", "shellcheck"),
            ("systemd-analyze", "systemd"),
            ("lintian", "lintian"),
            ("rpmlint", "rpmlint"),
            ("rpm", "rpm"),
            ("dpkg-deb", "dpkg"),
            ("skopeo", "skopeo"),
            ("oci-image-tool", "oci-image-tool"),
            ("podman", "podman"),
            ("runc", "runc"),
            ("curl", "curl"),
        ])
    })?;
    sh::stage("check binary is static", || binary::check_static(&ctx.dist.join(ctx.binary_name())))?;
    sh::stage("check scripts (shellcheck, sysusers line)", || scripts(ctx))?;
    sh::stage("check unit (systemd-analyze security)", || unit_security(ctx))?;
    sh::stage("check config.yaml and env file (config check)", || config_files(ctx))?;
    sh::stage("check deb (lintian, dpkg-deb -I/-c)", || deb(ctx))?;
    sh::stage("check rpm (rpmlint, rpm -qp)", || rpm(ctx))?;
    sh::stage("check tarball", || tarball(ctx))?;
    sh::stage("check OCI (skopeo, oci-image-tool)", || oci_static(ctx))?;
    sh::stage("check OCI image runs (podman)", || oci_run(ctx))?;
    Ok(())
}

fn packaging(ctx: &Ctx, rel: &str) -> PathBuf {
    ctx.root.join("packaging").join(rel)
}

fn scripts(ctx: &Ctx) -> Result<()> {
    let mut cmd = Command::new("shellcheck");
    cmd.args(["--shell=sh", "--severity=style"]);
    for s in ["preinstall.sh", "postinstall.sh", "preremove.sh", "postremove.sh"] {
        cmd.arg(packaging(ctx, &format!("scripts/{s}")));
    }
    cmd.arg(packaging(ctx, "install.sh"));
    sh::run(&mut cmd)?;
    // preinstall.sh inlines the sysusers line (the file is not unpacked yet
    // when it runs); both must say the same.
    let sysusers = std::fs::read_to_string(packaging(ctx, "sysusers.conf"))?;
    let line = sysusers.lines().find(|l| l.starts_with("u ")).context("sysusers.conf has no `u` line")?;
    let pre = std::fs::read_to_string(packaging(ctx, "scripts/preinstall.sh"))?;
    ensure!(pre.lines().any(|l| l == line), "scripts/preinstall.sh does not inline sysusers.conf's `{line}`");
    Ok(())
}

fn unit_security(ctx: &Ctx) -> Result<()> {
    let out = sh::capture(
        Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(packaging(ctx, "peat-sidecar.service")),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let level = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for peat-sidecar.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .with_context(|| format!("no exposure level in:\n{text}{}", String::from_utf8_lossy(&out.stderr)))?;
    eprintln!("exposure level {level} (limit {MAX_EXPOSURE})");
    ensure!(level <= MAX_EXPOSURE, "unit exposure {level} is above {MAX_EXPOSURE}:\n{text}");
    Ok(())
}

/// The shipped config.yaml must pass `config check` as it is, and every key
/// it mentions (set or commented out) must be a real setting; every
/// variable the env file mentions must be accepted too.
fn config_files(ctx: &Ctx) -> Result<()> {
    let bin = ctx.dist.join(ctx.binary_name());
    let check = |cmd: &mut Command| -> Result<String> {
        let out = sh::capture(cmd.args(["config", "check"]).env_clear().env("HOME", &ctx.dist))?;
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(out.status.success(), "`peat-sidecar config check` failed: {stderr}");
        ensure!(!stderr.contains("unknown"), "`peat-sidecar config check` warned: {stderr}");
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let config = packaging(ctx, "config.yaml");
    let effective = check(Command::new(&bin).arg("--config").arg(&config))?;
    let known: Vec<&str> = effective.lines().filter_map(|l| l.split_once(':').map(|(k, _)| k)).collect();
    let text = std::fs::read_to_string(&config)?;
    for line in text.lines() {
        let line = line.strip_prefix('#').unwrap_or(line);
        let Some((key, _)) = line.split_once(": ") else { continue };
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            ensure!(known.contains(&key), "config.yaml mentions `{key}`, which is not a setting");
        }
    }

    let env_text = std::fs::read_to_string(packaging(ctx, "peat-sidecar.default"))?;
    let mut cmd = Command::new(&bin);
    let mut count = 0;
    for line in env_text.lines() {
        let line = line.strip_prefix('#').unwrap_or(line);
        if let Some((name, value)) = line.split_once('=')
            && name.starts_with("PEAT_SIDECAR_")
            && !name.contains(' ')
        {
            cmd.env(name, value);
            count += 1;
        }
    }
    ensure!(count > 0, "the env file mentions no PEAT_SIDECAR_ variable");
    check(&mut cmd)?;
    eprintln!("config.yaml and {count} env file variables accepted");
    Ok(())
}

/// Asserts that `haystack` contains every needle, naming what is missing.
fn contains_all(what: &str, haystack: &str, needles: &[&str]) -> Result<()> {
    let missing: Vec<_> = needles.iter().filter(|n| !haystack.contains(*n)).collect();
    ensure!(missing.is_empty(), "{what} lacks {missing:?}:\n{haystack}");
    Ok(())
}

fn deb(ctx: &Ctx) -> Result<()> {
    let deb = ctx.dist.join(ctx.deb_name());
    // Errors and warnings fail (--show-overrides would count overridden tags too);
    // overrides (shipped in the package) each carry their reason.
    let out = sh::capture(
        Command::new("lintian").args(["--fail-on", "error,warning", "--display-info", "--allow-root"]).arg(&deb),
    )?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprint!("{report}");
    ensure!(out.status.success(), "lintian reported errors or warnings");

    let info = sh::output(Command::new("dpkg-deb").arg("-I").arg(&deb))?;
    contains_all(
        "dpkg-deb -I",
        &info,
        &[
            "Package: peat-sidecar",
            &format!("Version: {}-{}", ctx.version, ctx.release),
            "Architecture: amd64",
            "Enhances: uds-remote-agent",
            "Section: net",
            "preinst",
            "postinst",
            "prerm",
            "postrm",
            "conffiles",
        ],
    )?;
    ensure!(!info.contains("Depends:"), "a static binary needs no Depends:\n{info}");
    let control = ctx.dist.join(".check-deb-control");
    let _ = std::fs::remove_dir_all(&control);
    sh::run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control))?;
    let read = |name: &str| std::fs::read_to_string(control.join(name)).with_context(|| format!("deb control {name}"));
    let conffiles = (read("conffiles")?, read("postinst")?);
    std::fs::remove_dir_all(&control)?;
    contains_all("conffiles", &conffiles.0, &["/etc/default/peat-sidecar", "/etc/peat-sidecar/config.yaml"])?;
    contains_all("postinst", &conffiles.1, &["try-restart", "systemctl enable"])?;

    let list = sh::output(Command::new("dpkg-deb").arg("-c").arg(&deb))?;
    let expect = [
        ("-rwxr-xr-x root/root", "./usr/bin/peat-sidecar"),
        ("-rw-r--r-- root/root", "./usr/lib/systemd/system/peat-sidecar.service"),
        ("-rw-r--r-- root/root", "./usr/lib/sysusers.d/peat-sidecar.conf"),
        ("-rw-r--r-- root/root", "./usr/lib/tmpfiles.d/peat-sidecar.conf"),
        ("-rw-r--r-- root/root", "./etc/default/peat-sidecar"),
        ("-rw-r----- root/peat-sidecar", "./etc/peat-sidecar/config.yaml"),
        ("-rw-r--r-- root/root", "./usr/share/man/man1/peat-sidecar.1.gz"),
        ("-rw-r--r-- root/root", "./usr/share/bash-completion/completions/peat-sidecar"),
        ("-rw-r--r-- root/root", "./usr/share/zsh/vendor-completions/_peat-sidecar"),
        ("-rw-r--r-- root/root", "./usr/share/fish/vendor_completions.d/peat-sidecar.fish"),
        ("-rw-r--r-- root/root", "./usr/share/doc/peat-sidecar/copyright"),
        // nFPM writes the changelog with numeric root ownership.
        ("-rw-r--r-- 0/0", "./usr/share/doc/peat-sidecar/changelog.Debian.gz"),
        ("-rw-r--r-- root/root", "./usr/share/lintian/overrides/peat-sidecar"),
    ];
    for (mode_owner, path) in expect {
        ensure!(
            list.lines().any(|l| l.starts_with(mode_owner) && l.ends_with(path)),
            "dpkg-deb -c: no `{mode_owner} … {path}` in:\n{list}"
        );
    }
    Ok(())
}

fn rpm(ctx: &Ctx) -> Result<()> {
    let rpm = ctx.dist.join(ctx.rpm_name());
    let out = sh::capture(
        Command::new("rpmlint").arg("--rpmlintrc").arg(packaging(ctx, "peat-sidecar.rpmlintrc")).arg(&rpm),
    )?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprint!("{report}");
    ensure!(out.status.success(), "rpmlint failed");
    ensure!(
        report.contains(" 0 errors, 0 warnings"),
        "rpmlint reported errors or warnings (fix them or filter them with a reason in packaging/peat-sidecar.rpmlintrc)"
    );

    let q = |args: &[&str]| sh::output(Command::new("rpm").arg("-qp").args(args).arg(&rpm));
    let scripts = q(&["--scripts"])?;
    contains_all(
        "rpm -qp --scripts",
        &scripts,
        &[
            "preinstall scriptlet",
            "postinstall scriptlet",
            "preuninstall scriptlet",
            "postuninstall scriptlet",
            "systemd-sysusers",
            "systemctl enable",
            "try-restart",
            "systemctl disable",
        ],
    )?;
    let requires = q(&["--requires"])?;
    let shared: Vec<_> = requires.lines().filter(|l| l.contains(".so")).collect();
    ensure!(shared.is_empty(), "the static binary must not require shared libraries: {shared:?}");
    let info = q(&["--queryformat", "%{NAME} %{VERSION} %{RELEASE} %{ARCH} %{LICENSE} %{BUILDHOST}\\n"])?;
    contains_all(
        "rpm -qp --queryformat",
        &info,
        &[&format!("peat-sidecar {} {} x86_64 Apache-2.0 reproducible", ctx.version, ctx.release)],
    )?;
    contains_all("rpm -qp --suggests", &q(&["--suggests"])?, &["uds-remote-agent"])?;
    let config = q(&["--configfiles"])?;
    contains_all("rpm -qp --configfiles", &config, &["/etc/default/peat-sidecar", "/etc/peat-sidecar/config.yaml"])?;
    let list = q(&["--queryformat", "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\\n]"])?;
    let expect = [
        ("-rwxr-xr-x", "root", "/usr/bin/peat-sidecar"),
        ("-rw-r-----", "peat-sidecar", "/etc/peat-sidecar/config.yaml"),
        ("-rw-r--r--", "root", "/usr/lib/systemd/system/peat-sidecar.service"),
        ("-rw-r--r--", "root", "/usr/lib/sysusers.d/peat-sidecar.conf"),
        ("-rw-r--r--", "root", "/usr/lib/tmpfiles.d/peat-sidecar.conf"),
        ("-rw-r--r--", "root", "/usr/share/man/man1/peat-sidecar.1.gz"),
        ("-rw-r--r--", "root", "/usr/share/licenses/peat-sidecar/copyright"),
    ];
    for (mode, group, path) in expect {
        ensure!(
            list.lines().any(|l| {
                let f: Vec<_> = l.split_whitespace().collect();
                f.first() == Some(&mode) && f.get(2) == Some(&group) && f.get(3) == Some(&path)
            }),
            "rpm -qp file list: no `{mode} … {group} … {path}` in:\n{list}"
        );
    }
    Ok(())
}

fn tarball(ctx: &Ctx) -> Result<()> {
    let list = sh::output(Command::new("tar").arg("-tvzf").arg(ctx.dist.join(ctx.tarball_name())))?;
    let top = format!("peat-sidecar-{}", ctx.version);
    for path in [
        "install.sh",
        "usr/bin/peat-sidecar",
        "usr/lib/systemd/system/peat-sidecar.service",
        "usr/lib/sysusers.d/peat-sidecar.conf",
        "usr/lib/tmpfiles.d/peat-sidecar.conf",
        "usr/share/man/man1/peat-sidecar.1.gz",
        "etc/default/peat-sidecar",
        "etc/peat-sidecar/config.yaml",
    ] {
        let want = format!("{top}/{path}");
        ensure!(list.lines().any(|l| l.ends_with(&want)), "release tarball lacks {want}:\n{list}");
    }
    Ok(())
}

fn oci_static(ctx: &Ctx) -> Result<()> {
    let archive = format!("oci-archive:{}", ctx.dist.join(ctx.oci_archive_name()).display());
    let inspect: serde_json::Value =
        serde_json::from_str(&sh::output(Command::new("skopeo").args(["inspect", &archive]))?)?;
    eprintln!("{}", serde_json::to_string_pretty(&inspect)?);
    ensure!(inspect["Architecture"] == "amd64" && inspect["Os"] == "linux", "wrong platform");
    ensure!(inspect["Labels"]["org.opencontainers.image.version"] == ctx.version.as_str(), "version label");
    for label in ["title", "description", "revision", "created", "source", "licenses"] {
        let key = format!("org.opencontainers.image.{label}");
        ensure!(inspect["Labels"][&key].is_string(), "label {key} is missing");
    }
    ensure!(inspect["Layers"].as_array().map(Vec::len) == Some(1), "expected exactly one layer");

    let config: serde_json::Value =
        serde_json::from_str(&sh::output(Command::new("skopeo").args(["inspect", "--config", &archive]))?)?;
    let c = &config["config"];
    let user = format!("{}:{}", oci::IMAGE_UID, oci::IMAGE_UID);
    ensure!(c["User"] == user.as_str(), "user is not {user}: {}", c["User"]);
    ensure!(c["Entrypoint"] == serde_json::json!(["/usr/bin/peat-sidecar"]), "entrypoint: {}", c["Entrypoint"]);
    ensure!(c["Volumes"].get("/var/lib/peat-sidecar").is_some(), "no /var/lib/peat-sidecar volume");
    for port in [oci::API_PORT, oci::MESH_PORT] {
        ensure!(c["ExposedPorts"].get(format!("{port}/tcp")).is_some(), "port {port} not exposed");
    }

    // The layout and the archive must hold the same image.
    let layout_ref = format!("oci:{}:{}", ctx.oci_layout().display(), ctx.version);
    let from_layout: serde_json::Value =
        serde_json::from_str(&sh::output(Command::new("skopeo").args(["inspect", &layout_ref]))?)?;
    ensure!(
        from_layout["Digest"] == inspect["Digest"],
        "layout and archive differ: {} vs {}",
        from_layout["Digest"],
        inspect["Digest"]
    );
    // oci-image-tool 1.0.0-rc1 cannot walk tar archives (it fails on any
    // tar, even one made by GNU tar), so it validates the layout directory.
    sh::run(
        Command::new("oci-image-tool")
            .args(["validate", "--type", "image", "--ref", &format!("name={}", ctx.version)])
            .arg(ctx.oci_layout()),
    )
    .context("oci-image-tool validate")
}

/// A podman that keeps all its state in `dir` and works on this kind of host:
/// vfs storage, runc (crun refuses hybrid cgroups), cgroupfs, modest ulimits.
fn podman(dir: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("storage"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args(["--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .args(["--events-backend", "file", "--tmpdir"])
        .arg(dir.join("tmp"))
        .env("CONTAINERS_CONF", dir.join("containers.conf"));
    cmd
}

fn free_loopback_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn oci_run(ctx: &Ctx) -> Result<()> {
    let dir = std::env::temp_dir().join(format!("peat-sidecar-podman-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tmp"))?;
    std::fs::write(
        dir.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=4096:4096\", \"nproc=4096:4096\"]\n",
    )?;
    let result = oci_run_in(ctx, &dir);
    let _ = sh::capture(podman(&dir).args(["rm", "--force", "--all"]));
    let _ = sh::capture(podman(&dir).args(["volume", "prune", "--force"]));
    let _ = sh::capture(podman(&dir).args(["system", "reset", "--force"]));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn oci_run_in(ctx: &Ctx, dir: &Path) -> Result<()> {
    let archive = format!("oci-archive:{}", ctx.dist.join(ctx.oci_archive_name()).display());
    let image = sh::output(podman(dir).args(["pull", "--quiet", &archive]))?.trim().to_owned();
    let port = free_loopback_port()?;
    let name = "peat-sidecar-check";
    // Host network, but the API only on loopback and no mesh listener.
    let id = sh::output(podman(dir).args([
        "run",
        "--detach",
        "--name",
        name,
        "--network",
        "host",
        "--env",
        &format!("PEAT_SIDECAR_LISTEN=tcp://127.0.0.1:{port}"),
        "--env",
        "PEAT_SIDECAR_MESH_LISTEN=disabled",
        &image,
    ]))?;
    eprintln!("container {} listening on 127.0.0.1:{port}", id.trim());

    let url = |path: &str| format!("http://127.0.0.1:{port}/{path}");
    let post = |path: &str, body: &str| {
        sh::capture(Command::new("curl").args([
            "-sS",
            "--fail-with-body",
            "--max-time",
            "5",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
            &url(path),
        ]))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = post("grpc.health.v1.Health/Check", "{}")?;
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && body.contains("SERVING") {
            eprintln!("health: {body}");
            break;
        }
        if Instant::now() > deadline {
            let logs = sh::capture(podman(dir).args(["logs", name]))?;
            bail!(
                "no healthy API within 30s (last: {body} {}); container logs:\n{}{}",
                String::from_utf8_lossy(&out.stderr),
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let put = post(
        "peat.sidecar.v1.PeatSidecar/PutDocument",
        r#"{"collection":"checks","docId":"oci","jsonData":"{\"ok\":true}"}"#,
    )?;
    ensure!(
        put.status.success(),
        "PutDocument failed: {}{}",
        String::from_utf8_lossy(&put.stdout),
        String::from_utf8_lossy(&put.stderr)
    );
    let get = post("peat.sidecar.v1.PeatSidecar/GetDocument", r#"{"collection":"checks","docId":"oci"}"#)?;
    let got = String::from_utf8_lossy(&get.stdout).into_owned();
    ensure!(get.status.success(), "GetDocument failed: {got}{}", String::from_utf8_lossy(&get.stderr));
    let doc = serde_json::from_str::<serde_json::Value>(&got)
        .ok()
        .and_then(|v| v["jsonData"].as_str().and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok()));
    ensure!(doc == Some(serde_json::json!({"ok": true})), "GetDocument did not return the stored document: {got}");
    eprintln!("put/get through the container API: {got}");

    // The binary is PID 1 in the container: SIGTERM must end it promptly
    // and cleanly.
    let start = Instant::now();
    sh::run(podman(dir).args(["kill", "--signal", "TERM", name]))?;
    let code = sh::output(podman(dir).args(["wait", name]))?;
    let took = start.elapsed();
    let logs = sh::capture(podman(dir).args(["logs", name]))?;
    eprintln!(
        "container exited with {} after SIGTERM in {:.2}s; logs:\n{}{}",
        code.trim(),
        took.as_secs_f64(),
        String::from_utf8_lossy(&logs.stdout),
        String::from_utf8_lossy(&logs.stderr)
    );
    ensure!(code.trim() == "0", "exit status after SIGTERM was {}", code.trim());
    ensure!(took <= STOP_DEADLINE, "took {took:?} to stop after SIGTERM (limit {STOP_DEADLINE:?})");
    Ok(())
}
