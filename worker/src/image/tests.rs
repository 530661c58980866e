//! Tests of the image store with archives built in the test.

use std::io::Write;

use serde_json::json;

use super::*;

fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_size(data.len() as u64);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&dir.path().join("image")).unwrap();
    (dir, s)
}

fn r(s: &str) -> Reference {
    Reference::parse(s).unwrap()
}

fn docker_save(layer: &[u8], tags: &[&str], corrupt: bool) -> Vec<u8> {
    let diff_id = digest_of(layer);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["/bin/app"], "Env": ["A=1"] },
        "rootfs": { "type": "layers", "diff_ids": [if corrupt { digest_of(b"other") } else { diff_id }] }
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!([{
        "Config": "config.json", "RepoTags": tags, "Layers": ["abc/layer.tar"]
    }]))
    .unwrap();
    tar_with(&[
        ("manifest.json", &manifest),
        ("config.json", &config),
        ("abc/layer.tar", layer),
    ])
}

#[test]
fn import_makes_a_one_layer_image() {
    let (_d, s) = store();
    let rootfs = tar_with(&[("bin/app", b"#!/bin/sh\n")]);
    let img = s.import_rootfs(&rootfs[..], &r("myimg:1")).unwrap();
    assert_eq!(img.layers.len(), 1);
    assert_eq!(img.layers[0].diff_id, digest_of(&rootfs));
    assert_eq!(
        img.references,
        vec!["docker.io/library/myimg:1".to_string()]
    );
    let cfg = s.config(&img).unwrap();
    assert_eq!(cfg.rootfs().diff_ids(), &vec![digest_of(&rootfs)]);
    assert!(cfg.config().as_ref().unwrap().env().as_ref().unwrap()[0].starts_with("PATH="));
    assert_eq!(s.resolve("myimg:1").unwrap().id, img.id);
    assert_eq!(s.resolve(&img.id[7..19]).unwrap().id, img.id);
    let dirs = s.layer_dirs(&img).unwrap();
    assert_eq!(
        std::fs::read(dirs[0].join("bin/app")).unwrap(),
        b"#!/bin/sh\n"
    );
    // Importing again under the same name moves the name to the new image.
    let again = s.import_rootfs(&rootfs[..], &r("myimg:1")).unwrap();
    assert_eq!(
        again.references,
        vec!["docker.io/library/myimg:1".to_string()]
    );
    assert_eq!(s.resolve("myimg:1").unwrap().id, again.id);
}

#[test]
fn import_rejects_what_is_not_a_tar() {
    let (_d, s) = store();
    let e = s
        .import_rootfs(&b"hello, not a tar"[..], &r("x"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a tar archive"), "{e}");
    let e = s.import_rootfs(&b""[..], &r("x")).unwrap_err().to_string();
    assert!(e.contains("empty"), "{e}");
    assert!(s.list().unwrap().is_empty());
}

#[test]
fn loads_docker_save_archives_and_checks_digests() {
    let (_d, s) = store();
    let layer = tar_with(&[("app", b"binary")]);
    // Gzip-compressed, as `docker save | gzip` makes.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&docker_save(&layer, &["team/app:v1"], false))
        .unwrap();
    let imgs = s.load_archive(&gz.finish().unwrap()[..]).unwrap();
    assert_eq!(imgs.len(), 1);
    let img = s.resolve("team/app:v1").unwrap();
    let cfg = s.config(&img).unwrap();
    assert_eq!(
        cfg.config().as_ref().unwrap().cmd().as_ref().unwrap(),
        &vec!["/bin/app".to_string()]
    );
    let e = s
        .load_archive(&docker_save(&layer, &["bad:1"], true)[..])
        .unwrap_err()
        .to_string();
    assert!(e.contains("digest mismatch"), "{e}");
    assert!(s.resolve("bad:1").is_err());
}

#[test]
fn loads_oci_layouts() {
    let (_d, s) = store();
    let layer = tar_with(&[("hello", b"world")]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&layer).unwrap();
    let layer_gz = gz.finish().unwrap();
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": { "type": "layers", "diff_ids": [digest_of(&layer)] }
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest_of(&layer_gz), "size": layer_gz.len() }]
    }))
    .unwrap();
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{ "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest_of(&manifest), "size": manifest.len(),
                        "annotations": { "io.containerd.image.name": "localhost:5000/oci/app:2" } }]
    }))
    .unwrap();
    let blob = |d: &[u8]| format!("blobs/sha256/{}", &digest_of(d)[7..]);
    let (b1, b2, b3) = (blob(&config), blob(&manifest), blob(&layer_gz));
    let archive = tar_with(&[
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
        (&b1, &config),
        (&b2, &manifest),
        (&b3, &layer_gz),
    ]);
    let imgs = s.load_archive(&archive[..]).unwrap();
    assert_eq!(
        imgs[0].references,
        vec!["localhost:5000/oci/app:2".to_string()]
    );
    let dirs = s.layer_dirs(&imgs[0]).unwrap();
    assert_eq!(std::fs::read(dirs[0].join("hello")).unwrap(), b"world");
    let e = s
        .load_archive(&tar_with(&[("random.txt", b"x")])[..])
        .unwrap_err()
        .to_string();
    assert!(e.contains("not an image archive"), "{e}");
}

#[test]
fn remove_untags_then_deletes_unless_in_use() {
    let (_d, s) = store();
    let layer = tar_with(&[("f", b"1")]);
    let img = s
        .load_archive(&docker_save(&layer, &["a", "b"], false)[..])
        .unwrap()
        .remove(0);
    assert_eq!(s.resolve("a").unwrap().references.len(), 2);
    let out = s.remove("a", false, &|_| true).unwrap();
    assert_eq!(out.untagged, vec!["a:latest".to_string()]);
    assert!(out.deleted.is_empty());
    let e = s
        .remove("b", false, &|id| id == img.id)
        .unwrap_err()
        .to_string();
    assert!(e.contains("in use"), "{e}");
    s.layer_dirs(&img).unwrap();
    let out = s.remove("b", false, &|_| false).unwrap();
    assert_eq!(out.deleted.len(), 3, "config, manifest, layer");
    assert!(s.list().unwrap().is_empty());
    assert!(!s.has_blob(&img.id));
    let e = s.resolve("b").unwrap_err().to_string();
    assert!(e.contains("not found"), "{e}");
    assert!(
        !s.root()
            .join("layers")
            .join(&img.layers[0].diff_id[7..])
            .exists()
    );

    // Forced removal of an image in use only untags it; its content stays until a
    // removal by id once no container uses it.
    let img = s
        .load_archive(&docker_save(&layer, &["c"], false)[..])
        .unwrap()
        .remove(0);
    let dirs = s.layer_dirs(&img).unwrap();
    let out = s.remove("c", true, &|_| true).unwrap();
    assert_eq!(out.untagged, vec!["c:latest".to_string()]);
    assert!(out.deleted.is_empty());
    assert!(
        dirs[0].join("f").exists(),
        "a container may have it mounted"
    );
    assert!(s.resolve("c").is_err());
    assert!(s.list().unwrap()[0].references.is_empty());
    let e = s.remove(&img.id, true, &|_| true).unwrap_err().to_string();
    assert!(e.contains("remove the container first"), "{e}");
    let out = s.remove(&img.id, false, &|_| false).unwrap();
    assert_eq!(out.deleted.len(), 3);
    assert!(!dirs[0].exists());
}

#[test]
fn layers_that_differ_from_their_diff_id_are_not_unpacked() {
    let (_d, s) = store();
    let layer = tar_with(&[("f", b"1")]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [digest_of(b"something else")] }
    }))
    .unwrap();
    let layer_digest = s.put_blob(&layer[..], None).unwrap();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": digest_of(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer.len() }]
    }))
    .unwrap();
    let img = s.put_image(&manifest, &config, &r("liar")).unwrap();
    let e = s.layer_dirs(&img).unwrap_err().to_string();
    assert!(e.contains("digest mismatch"), "{e}");
    let layers: Vec<_> = std::fs::read_dir(s.root().join("layers"))
        .unwrap()
        .collect();
    assert!(
        layers.is_empty(),
        "nothing unpacked under the claimed diff id"
    );
    let tmp: Vec<_> = std::fs::read_dir(s.root().join("tmp")).unwrap().collect();
    assert!(tmp.is_empty(), "the temp dir is cleaned");
}

#[test]
fn put_blob_verifies() {
    let (_d, s) = store();
    let d = s.put_blob(&b"abc"[..], Some(&digest_of(b"abc"))).unwrap();
    assert!(s.has_blob(&d));
    let e = s
        .put_blob(&b"abc"[..], Some(&digest_of(b"abd")))
        .unwrap_err()
        .to_string();
    assert!(e.contains("digest mismatch"), "{e}");
}

/// Real overlayfs: a whiteout in the upper layer hides a file of the lower one.
#[test]
fn whiteouts_hide_lower_files_through_overlayfs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: overlayfs mounts need root");
        return;
    }
    let (d, s) = store();
    let lower = tar_with(&[("keep", b"1"), ("gone", b"2")]);
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_cksum();
    b.append_data(&mut h, ".wh.gone", &b""[..]).unwrap();
    let upper = b.into_inner().unwrap();
    let l1 = s.import_rootfs(&lower[..], &r("l1")).unwrap();
    let l2 = s.import_rootfs(&upper[..], &r("l2")).unwrap();
    let lower_dir = s.layer_dirs(&l1).unwrap().remove(0);
    let upper_dir = s.layer_dirs(&l2).unwrap().remove(0);
    let target = d.path().join("merged");
    std::fs::create_dir_all(&target).unwrap();
    let data = format!("lowerdir={}:{}", upper_dir.display(), lower_dir.display());
    nix::mount::mount(
        Some("overlay"),
        &target,
        Some("overlay"),
        nix::mount::MsFlags::MS_RDONLY,
        Some(data.as_str()),
    )
    .unwrap();
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
    let _guard = Unmount(target.clone());
    assert!(target.join("keep").exists());
    assert!(
        !target.join("gone").exists(),
        "the whiteout hides the lower file"
    );
}

#[test]
fn the_store_can_be_shared_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<ImageStore>();
    // Concurrent callers unpack a layer once and all see it whole.
    let (_d, s) = store();
    let img = s
        .import_rootfs(&tar_with(&[("a/b", b"c")])[..], &r("shared"))
        .unwrap();
    let s = std::sync::Arc::new(s);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (s, img) = (s.clone(), img.clone());
            std::thread::spawn(move || s.layer_dirs(&img).unwrap())
        })
        .collect();
    for h in handles {
        let dirs = h.join().unwrap();
        assert_eq!(std::fs::read(dirs[0].join("a/b")).unwrap(), b"c");
    }
}

/// Older `docker save` stores a layer shared by two images once and links the other copy.
#[test]
fn docker_save_layer_symlinks_are_followed_only_inside_the_archive() {
    let layer = tar_with(&[("shared", b"1")]);
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": { "type": "layers", "diff_ids": [digest_of(&layer)] }
    }))
    .unwrap();
    let build = |link_target: &str| {
        let manifest = serde_json::to_vec(&json!([
            { "Config": "c.json", "RepoTags": ["one:1"], "Layers": ["abc/layer.tar"] },
            { "Config": "c.json", "RepoTags": ["two:1"], "Layers": ["def/layer.tar"] }
        ]))
        .unwrap();
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in [
            ("manifest.json", &manifest[..]),
            ("c.json", &config[..]),
            ("abc/layer.tar", &layer[..]),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            h.set_cksum();
            b.append_data(&mut h, path, data).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_link(&mut h, "def/layer.tar", link_target).unwrap();
        b.into_inner().unwrap()
    };
    let (_d, s) = store();
    let imgs = s.load_archive(&build("../abc/layer.tar")[..]).unwrap();
    assert_eq!(imgs.len(), 2);
    assert_eq!(
        s.resolve("two:1").unwrap().layers[0].diff_id,
        digest_of(&layer)
    );
    let (_d, s) = store();
    let e = s
        .load_archive(&build("../../../../../../etc/hostname")[..])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"def/layer.tar\" named in manifest.json is missing"),
        "{e}"
    );
    assert!(s.resolve("two:1").is_err());
}
