//! The cached Debian bookworm guest: debootstrap (minbase + systemd, the
//! Debian kernel, rpm, curl), customised by tests/vm/image/customize.sh in a
//! chroot, turned into an ext4 disk with `mkfs.ext4 -d` (no loop mounts) and
//! stored as a qcow2 base beside its kernel and small initrd. The cache
//! entry is named by a hash of every input, so changing the recipe or the
//! files under tests/vm/image/ builds a new guest and drops the old one.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

use super::host;

/// Bump when the build steps below change in a way the inputs do not show.
const RECIPE: &str = "peat-sidecar-vm-image 1";
const SUITE: &str = "bookworm";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
/// What the checks need besides minbase: systemd as init, udev for the
/// virtio devices, initramfs-tools for the small initrd, rpm to install the
/// .rpm with its scriptlets, curl for Connect JSON, iproute2 for `ss`.
const PACKAGES: &[&str] =
    &["systemd", "systemd-sysv", "udev", "initramfs-tools", "kmod", "rpm", "curl", "iproute2", "procps"];
const DISK_SIZE: &str = "3G";

/// A built guest in the cache.
pub struct Image {
    pub dir: PathBuf,
}

impl Image {
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
    pub fn base(&self) -> PathBuf {
        self.dir.join("base.qcow2")
    }
}

fn mirror() -> String {
    std::env::var("PEAT_SIDECAR_VM_MIRROR").unwrap_or_else(|_| DEFAULT_MIRROR.to_string())
}

fn image_files(root: &Path) -> Result<Vec<PathBuf>> {
    let dir = root.join("tests/vm/image");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()?;
    files.sort();
    Ok(files)
}

/// The cache key: a hash over the recipe, suite, mirror, package list and
/// the contents of every file copied into the guest.
fn key(root: &Path) -> Result<(String, String)> {
    let mut inputs =
        format!("{RECIPE}\nsuite {SUITE}\nmirror {}\npackages {}\ndisk {DISK_SIZE}\n", mirror(), PACKAGES.join(","));
    for file in image_files(root)? {
        let data = std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
        let name = file.file_name().unwrap_or_default().to_string_lossy();
        inputs.push_str(&format!("file {name} {}\n", hex(&Sha256::digest(&data))));
    }
    let key = hex(&Sha256::digest(inputs.as_bytes()))[..16].to_string();
    Ok((key, inputs))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Returns the cached guest for the current inputs, building it first when
/// absent (or when `rebuild` is set).
pub fn ensure(root: &Path, cache: &Path, rebuild: bool) -> Result<Image> {
    let (key, inputs) = key(root)?;
    // One builder at a time per cache; a second run waits, then finds the
    // image built.
    let lock = std::fs::File::create(cache.join("lock")).context("creating the cache lock")?;
    lock.lock().context("locking the guest image cache")?;
    let images = cache.join("images");
    let image = Image { dir: images.join(&key) };
    if !rebuild && image.base().is_file() && image.kernel().is_file() && image.initrd().is_file() {
        println!("guest image {key} is cached in {}", image.dir.display());
        return Ok(image);
    }
    println!("building guest image {key} into {}", image.dir.display());
    std::fs::create_dir_all(&images)?;
    let staging = images.join(format!("{key}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging)?;
    }
    std::fs::create_dir_all(&staging)?;
    build(root, cache, &staging)?;
    std::fs::write(staging.join("inputs.txt"), &inputs)?;
    if image.dir.exists() {
        std::fs::remove_dir_all(&image.dir)?;
    }
    std::fs::rename(&staging, &image.dir)?;
    // Older guests are half a gigabyte each and never used again.
    for entry in std::fs::read_dir(&images)? {
        let path = entry?.path();
        if path != image.dir {
            println!("removing stale guest image {}", path.display());
            std::fs::remove_dir_all(&path).ok();
        }
    }
    Ok(image)
}

/// Unmounts what it mounted, in reverse order, even when a step failed.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn mount(&mut self, args: &[&str], target: &Path) -> Result<()> {
        host::output(Command::new("mount").args(args).arg(target))?;
        self.0.push(target.to_path_buf());
        Ok(())
    }
    fn unmount_all(&mut self) -> Result<()> {
        while let Some(target) = self.0.pop() {
            host::output(Command::new("umount").arg(&target))?;
        }
        Ok(())
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        while let Some(target) = self.0.pop() {
            let _ = Command::new("umount").arg("-l").arg(&target).status();
        }
    }
}

fn build(root: &Path, cache: &Path, out: &Path) -> Result<()> {
    let work = cache.join("build");
    let rootfs = work.join("rootfs");
    if work.exists() {
        // A previous build that was interrupted may have left mounts.
        let _ = Command::new("umount").arg("-R").arg("-l").arg(&rootfs).status();
        std::fs::remove_dir_all(&work)?;
    }
    std::fs::create_dir_all(&rootfs)?;
    let debs = cache.join("debs");
    std::fs::create_dir_all(&debs)?;
    let mut mounts = Mounts(Vec::new());
    // dpkg fsyncs every file; on tmpfs that costs nothing, which turns a
    // 3-4 minute debootstrap into about one minute.
    if let Err(err) = mounts.mount(&["-t", "tmpfs", "-o", "size=4g,mode=0755", "tmpfs"], &rootfs) {
        println!("building on disk (tmpfs unavailable: {err:#})");
    }

    let t = std::time::Instant::now();
    host::run_logged(
        Command::new("debootstrap")
            .arg("--variant=minbase")
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(format!("--cache-dir={}", debs.display()))
            .arg(SUITE)
            .arg(&rootfs)
            .arg(mirror()),
        &work.join("debootstrap.log"),
    )
    .context("debootstrap")?;
    println!("debootstrap: {:.0} s", t.elapsed().as_secs_f64());

    let t = std::time::Instant::now();
    let recipe = rootfs.join("tmp/peat-vm-image");
    std::fs::create_dir_all(&recipe)?;
    for file in image_files(root)? {
        std::fs::copy(&file, recipe.join(file.file_name().unwrap_or_default()))?;
    }
    {
        let mut chroot_mounts = Mounts(Vec::new());
        chroot_mounts.mount(&["-t", "proc", "proc"], &rootfs.join("proc"))?;
        // The kernel package lands in the same cache as debootstrap's.
        chroot_mounts.mount(&["--bind", &debs.to_string_lossy()], &rootfs.join("var/cache/apt/archives"))?;
        host::run_logged(
            Command::new("chroot").arg(&rootfs).args(["/bin/sh", "/tmp/peat-vm-image/customize.sh"]),
            &work.join("customize.log"),
        )
        .context("customising the guest (tests/vm/image/customize.sh)")?;
        chroot_mounts.unmount_all()?;
    }
    std::fs::remove_dir_all(&recipe)?;
    println!("kernel, initrd and guest setup: {:.0} s", t.elapsed().as_secs_f64());

    let boot = rootfs.join("boot");
    let pick = |prefix: &str| -> Result<PathBuf> {
        let found: Vec<PathBuf> = std::fs::read_dir(&boot)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix)))
            .collect();
        match found.as_slice() {
            [one] => Ok(one.clone()),
            other => bail!("expected one {prefix}* in the guest's /boot, found {other:?}"),
        }
    };
    std::fs::copy(pick("vmlinuz-")?, out.join("vmlinuz"))?;
    std::fs::copy(pick("initrd.img-")?, out.join("initrd.img"))?;

    let t = std::time::Instant::now();
    let raw = work.join("disk.raw");
    host::output(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "peat-vm", "-E", "root_owner=0:0", "-d"])
            .arg(&rootfs)
            .arg(&raw)
            .arg(DISK_SIZE),
    )
    .context("mkfs.ext4 -d")?;
    host::output(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(out.join("base.qcow2")))?;
    println!("disk image: {:.0} s", t.elapsed().as_secs_f64());

    mounts.unmount_all()?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}
