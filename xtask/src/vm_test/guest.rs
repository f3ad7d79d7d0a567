//! Booting one throwaway guest: a copy-on-write qcow2 overlay of the cached
//! image, the kernel and initrd given to qemu directly, and a 9p share that
//! carries the job in and its log and exit status out. The guest's
//! peat-vm-check.service (tests/vm/image/) runs `job` from the share and
//! powers off; nothing here waits on the guest's network (it has none).
//! A boot may also get a raw data disk that outlives it, and have its power
//! cut (qemu killed) once the job's log says so.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::host;
use super::image::Image;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// How one boot ended.
pub struct Outcome {
    /// The guest's job ran (the share saw out/started).
    pub started: bool,
    /// The job's exit status, when it finished.
    pub status: Option<i32>,
    /// What the job printed.
    pub log: String,
    pub console: PathBuf,
    pub seconds: f64,
    /// Why the host gave up, if it did.
    pub aborted: Option<String>,
    /// The host cut the power, as [`BootOptions::cut_power_when`] asked.
    pub power_cut: bool,
}

/// The serial number of the data disk, and its path in the guest.
const DATA_DISK_SERIAL: &str = "peatdata";
pub const DATA_DISK: &str = "/dev/disk/by-id/virtio-peatdata";

/// How a guest boots, beyond its image and time limits.
#[derive(Default)]
pub struct BootOptions<'a> {
    /// Boot with `quiet` on the kernel command line.
    pub quiet: bool,
    /// Stream the job's output, each line with this prefix.
    pub prefix: Option<&'a str>,
    /// A raw disk image, the guest's [`DATA_DISK`]. The host's page cache keeps
    /// what the guest flushed to it when qemu is killed, and only that: a
    /// power cut as far as the guest can tell.
    pub data_disk: Option<&'a Path>,
    /// Kill qemu as soon as this holds for the job's log so far.
    pub cut_power_when: Option<&'a dyn Fn(&str) -> bool>,
}

pub struct Limits {
    /// Until the guest's job has started (the boot itself).
    pub start: Duration,
    /// Until the guest has powered off.
    pub total: Duration,
    /// Give up when the serial console is still silent after this long (a
    /// hypervisor that never runs the kernel); None to wait for `start`.
    pub first_output: Option<Duration>,
}

/// Kills qemu if the host side bails out early.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Prints what the guest's job has written to the share's log so far, as
/// whole lines prefixed with `prefix`.
struct LogFollower {
    path: PathBuf,
    printed: usize,
    prefix: String,
}

impl LogFollower {
    fn poll(&mut self, flush: bool) {
        let Ok(data) = std::fs::read(&self.path) else { return };
        let new = &data[self.printed.min(data.len())..];
        let end = if flush { new.len() } else { new.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) };
        for line in String::from_utf8_lossy(&new[..end]).lines() {
            println!("{}{line}", self.prefix);
        }
        self.printed += end;
    }
}

/// Boots a fresh overlay of `image` in `work` with `share` as the 9p share
/// (which must hold an executable `job`), streams the job's output as
/// `options` say and waits for the guest to power off.
pub fn boot(
    image: &Image,
    accel: Accel,
    work: &Path,
    share: &Path,
    limits: &Limits,
    options: &BootOptions,
) -> Result<Outcome> {
    let overlay = work.join("overlay.qcow2");
    if overlay.exists() {
        std::fs::remove_file(&overlay)?;
    }
    let out = share.join("out");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    host::output(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(image.base())
            .arg(&overlay),
    )
    .context("creating the copy-on-write overlay")?;
    let console = work.join("console.log");
    let (machine, cpu) = match accel {
        Accel::Kvm => ("q35,accel=kvm", "host"),
        Accel::Tcg => ("q35,accel=tcg", "max"),
    };
    let mut append = String::from("console=ttyS0 root=/dev/vda rw panic=-1 no_timer_check systemd.show_status=error");
    if options.quiet {
        append.push_str(" quiet");
    }
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nodefaults", "-no-user-config", "-display", "none", "-no-reboot"])
        .args(["-machine", machine, "-cpu", cpu, "-smp", "1", "-m", "1024"])
        .arg("-kernel")
        .arg(image.kernel())
        .arg("-initrd")
        .arg(image.initrd())
        .args(["-append", &append])
        // cache=unsafe: the overlay is thrown away after the run.
        .arg("-drive")
        .arg(format!("file={},if=virtio,format=qcow2,cache=unsafe", overlay.display()));
    if let Some(disk) = options.data_disk {
        // Guest flushes reach the file (writeback, not unsafe). A PCI slot
        // after the root disk's, which must stay /dev/vda.
        cmd.arg("-drive")
            .arg(format!("file={},if=none,id=data,format=raw,cache=writeback", disk.display()))
            .args(["-device", &format!("virtio-blk-pci,drive=data,serial={DATA_DISK_SERIAL},addr=0x10")]);
    }
    cmd.arg("-virtfs")
        .arg(format!("local,path={},mount_tag=vmshare,security_model=none,id=vmshare", share.display()))
        .args(["-device", "virtio-rng-pci", "-nic", "none"])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("qemu.stderr"))?);
    let start = Instant::now();
    let mut qemu = Qemu(cmd.spawn().context("starting qemu-system-x86_64")?);
    let mut aborted = None;
    let mut power_cut = false;
    let mut follower = options.prefix.map(|p| LogFollower { path: out.join("log"), printed: 0, prefix: p.to_string() });
    loop {
        if let Some(f) = follower.as_mut() {
            f.poll(false);
        }
        if let Some(status) = qemu.0.try_wait()? {
            if !status.success() {
                let stderr = host::tail(&work.join("qemu.stderr"), 20);
                if !out.join("started").exists() {
                    aborted = Some(format!("qemu exited with {status} before the guest came up: {stderr}"));
                }
            }
            break;
        }
        if let Some(cut_now) = options.cut_power_when
            && cut_now(&std::fs::read_to_string(out.join("log")).unwrap_or_default())
        {
            qemu.0.kill().context("cutting the guest's power")?;
            qemu.0.wait()?;
            power_cut = true;
            break;
        }
        let elapsed = start.elapsed();
        let started = out.join("started").exists();
        if !started {
            if let Some(limit) = limits.first_output {
                let silent = std::fs::metadata(&console).map(|m| m.len() == 0).unwrap_or(true);
                if elapsed > limit && silent {
                    aborted = Some(format!("no console output within {} s", limit.as_secs()));
                    break;
                }
            }
            if elapsed > limits.start {
                aborted = Some(format!("the guest did not start its job within {} s", limits.start.as_secs()));
                break;
            }
        }
        if elapsed > limits.total {
            aborted = Some(format!("the guest did not power off within {} s", limits.total.as_secs()));
            break;
        }
        // Cutting the power is timed to what the guest reports.
        let poll = if options.cut_power_when.is_some() { 20 } else { 200 };
        std::thread::sleep(Duration::from_millis(poll));
    }
    drop(qemu);
    if let Some(f) = follower.as_mut() {
        f.poll(true);
    }
    let status = match std::fs::read_to_string(out.join("status")) {
        Ok(s) => Some(s.trim().parse::<i32>().with_context(|| format!("bad status file content {s:?}"))?),
        Err(_) => None,
    };
    let log = std::fs::read(out.join("log")).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    Ok(Outcome {
        started: out.join("started").exists(),
        status,
        log,
        console,
        seconds: start.elapsed().as_secs_f64(),
        aborted,
        power_cut,
    })
}

/// Decides between KVM and TCG by booting the guest: /dev/kvm existing (or
/// even opening) proves nothing, since some hypervisors expose a KVM that
/// cannot run a stock kernel. `forced` skips the probe.
pub fn choose_accel(image: &Image, work: &Path, forced: Option<Accel>) -> Result<Accel> {
    if let Some(accel) = forced {
        println!("accelerator: {} (forced)", accel.name());
        return Ok(accel);
    }
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_err() {
        println!("accelerator: tcg (/dev/kvm cannot be opened)");
        return Ok(Accel::Tcg);
    }
    let share = work.join("share");
    std::fs::create_dir_all(&share)?;
    write_job(&share, "echo kvm-probe-ok\n")?;
    let limits = Limits {
        start: Duration::from_secs(60),
        total: Duration::from_secs(90),
        first_output: Some(Duration::from_secs(10)),
    };
    let outcome = boot(image, Accel::Kvm, work, &share, &limits, &BootOptions::default())?;
    if outcome.status == Some(0) && outcome.log.contains("kvm-probe-ok") {
        println!("accelerator: kvm (a probe guest booted in {:.1} s)", outcome.seconds);
        return Ok(Accel::Kvm);
    }
    let why = outcome.aborted.unwrap_or_else(|| format!("probe job status {:?}", outcome.status));
    println!("accelerator: tcg (KVM probe boot failed: {why})");
    Ok(Accel::Tcg)
}

/// Writes the share's `job`, the script the guest runs.
pub fn write_job(share: &Path, body: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let job = share.join("job");
    std::fs::write(&job, format!("#!/bin/sh\n{body}"))?;
    std::fs::set_permissions(&job, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Fails with the console's tail when the guest never reached its job.
pub fn explain(outcome: &Outcome) -> String {
    let mut s = String::new();
    if let Some(why) = &outcome.aborted {
        s.push_str(why);
        s.push('\n');
    }
    if !outcome.started {
        s.push_str(&format!(
            "last console lines ({}):\n{}",
            outcome.console.display(),
            host::tail(&outcome.console, 40)
        ));
    }
    s
}
