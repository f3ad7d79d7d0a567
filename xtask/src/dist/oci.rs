//! The OCI image: one layer holding the static binary and the data volume's
//! mount point, written as an OCI image layout directory and as an
//! `oci-archive` tarball of that layout. Built from `oci-spec` types and
//! serialised with sorted keys so the bytes are reproducible.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use oci_spec::image::{
    Arch, ConfigBuilder, Descriptor, DescriptorBuilder, HistoryBuilder, ImageConfigurationBuilder, ImageIndexBuilder,
    ImageManifestBuilder, MediaType, OciLayoutBuilder, Os, PlatformBuilder, RootFsBuilder,
};

use super::Ctx;
use super::archive::{self, Content, Entry};
use crate::sh;

/// Numeric user and group the container runs as (no /etc/passwd needed).
pub const IMAGE_UID: u64 = 65532;
pub const API_PORT: u16 = 50051;
pub const MESH_PORT: u16 = 7420;

/// Writes the layout to `layout` and its `oci-archive` to `archive_path`.
pub fn build(ctx: &Ctx, bin: &Path, layout: &Path, archive_path: &Path) -> Result<()> {
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;

    // The layer: /usr/bin/peat-sidecar and the (empty) volume directory owned
    // by the runtime user.
    let dir = |path: &str, mode, uid| Entry { path: path.into(), content: Content::Dir, mode, uid, gid: uid };
    let entries = [
        dir("usr", 0o755, 0),
        dir("usr/bin", 0o755, 0),
        Entry { path: "usr/bin/peat-sidecar".into(), content: Content::File(bin.into()), mode: 0o755, uid: 0, gid: 0 },
        dir("var", 0o755, 0),
        dir("var/lib", 0o755, 0),
        dir("var/lib/peat-sidecar", 0o750, IMAGE_UID),
    ];
    let layer_tar = archive::write_tar(&entries, ctx.epoch, Vec::new())?;
    let diff_id = format!("sha256:{}", sh::sha256_bytes(&layer_tar)?);
    let layer_gz = super::binary::gzip_best(&layer_tar)?;
    let layer = write_blob(&blobs, &layer_gz, MediaType::ImageLayerGzip)?;

    let created = rfc3339(ctx.epoch);
    let labels: HashMap<String, String> = [
        ("org.opencontainers.image.title", "peat-sidecar".to_owned()),
        ("org.opencontainers.image.description", ctx.description.clone()),
        ("org.opencontainers.image.version", ctx.version.clone()),
        ("org.opencontainers.image.revision", ctx.revision.clone()),
        ("org.opencontainers.image.created", created.clone()),
        ("org.opencontainers.image.source", ctx.repository.clone()),
        ("org.opencontainers.image.url", ctx.repository.clone()),
        ("org.opencontainers.image.licenses", ctx.license.clone()),
        ("org.opencontainers.image.vendor", "peat-sidecar".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();

    let config = ConfigBuilder::default()
        .user(format!("{IMAGE_UID}:{IMAGE_UID}"))
        .entrypoint(vec!["/usr/bin/peat-sidecar".to_owned()])
        .cmd(vec!["serve".to_owned()])
        // Container defaults: reachable through published ports, data on the volume.
        .env(vec![
            "PATH=/usr/bin".to_owned(),
            format!("PEAT_SIDECAR_LISTEN=tcp://0.0.0.0:{API_PORT}"),
            "PEAT_SIDECAR_DATA_DIR=/var/lib/peat-sidecar".to_owned(),
        ])
        .exposed_ports(vec![format!("{API_PORT}/tcp"), format!("{MESH_PORT}/tcp")])
        .volumes(vec!["/var/lib/peat-sidecar".to_owned()])
        .working_dir("/var/lib/peat-sidecar")
        .stop_signal("SIGTERM")
        .labels(labels.clone())
        .build()?;
    let image_config = ImageConfigurationBuilder::default()
        .created(created.clone())
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config)
        .rootfs(RootFsBuilder::default().typ("layers").diff_ids(vec![diff_id]).build()?)
        .history(vec![
            HistoryBuilder::default()
                .created(created.clone())
                .created_by("cargo xtask dist: static peat-sidecar binary")
                .build()?,
        ])
        .build()?;
    let config_desc = write_json_blob(&blobs, &image_config, MediaType::ImageConfig)?;

    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(config_desc)
        .layers(vec![layer])
        .annotations(labels)
        .build()?;
    let manifest_desc = write_json_blob(&blobs, &manifest, MediaType::ImageManifest)?;
    let mut annotated = manifest_desc;
    annotated.set_platform(Some(PlatformBuilder::default().architecture(Arch::Amd64).os(Os::Linux).build()?));
    annotated
        .set_annotations(Some(HashMap::from([("org.opencontainers.image.ref.name".to_owned(), ctx.version.clone())])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![annotated])
        .build()?;
    std::fs::write(layout.join("index.json"), canonical_json(&index)?)?;
    let oci_layout = OciLayoutBuilder::default().image_layout_version("1.0.0").build()?;
    std::fs::write(layout.join("oci-layout"), canonical_json(&oci_layout)?)?;

    // oci-archive: the layout as an uncompressed tar, blobs in sorted order.
    let mut entries = archive::tree_entries(layout, "")?;
    for e in &mut entries {
        e.mode = if matches!(e.content, Content::Dir) { 0o755 } else { 0o644 };
    }
    archive::write_tar(&entries, ctx.epoch, std::fs::File::create(archive_path)?)?;
    Ok(())
}

fn write_blob(blobs: &Path, data: &[u8], media_type: MediaType) -> Result<Descriptor> {
    let hex = sh::sha256_bytes(data)?;
    let path: PathBuf = blobs.join(&hex);
    std::fs::write(&path, data).with_context(|| format!("writing {}", path.display()))?;
    Ok(DescriptorBuilder::default()
        .media_type(media_type)
        .digest(oci_spec::image::Digest::try_from(format!("sha256:{hex}"))?)
        .size(data.len() as u64)
        .build()?)
}

fn write_json_blob<T: serde::Serialize>(blobs: &Path, value: &T, media_type: MediaType) -> Result<Descriptor> {
    write_blob(blobs, &canonical_json(value)?, media_type)
}

/// JSON with object keys sorted at every level (the spec types hold
/// HashMaps, whose iteration order changes from run to run).
fn canonical_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>> {
    fn sort(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(map) => {
                let mut pairs: Vec<_> = map.into_iter().collect();
                pairs.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(sort).collect()),
            other => other,
        }
    }
    Ok(serde_json::to_vec(&sort(serde_json::to_value(value)?))?)
}

/// RFC 3339 UTC time of a Unix timestamp, e.g. 2026-11-27T15:30:00Z.
pub fn rfc3339(epoch: i64) -> String {
    let days = epoch.div_euclid(86_400);
    let secs = epoch.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}
