//! Pull and push against a real registry (Debian's docker-registry) that the test starts
//! on 127.0.0.1, and `image load` of a `docker save` archive the test builds.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use shoal_tests::{Daemon, busybox_tarball, require_kernel, wait_for};

struct Registry {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Option<Registry> {
        Self::start_with_tls(None)
    }

    /// Starts the registry; with `tls = Some((cert_pem, key_pem))` it serves HTTPS.
    fn start_with_tls(tls: Option<(String, String)>) -> Option<Registry> {
        if Command::new("docker-registry")
            .arg("--version")
            .output()
            .is_err()
        {
            eprintln!(
                "SKIPPED: docker-registry is not installed (apt-get install docker-registry)"
            );
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.path().join("config.yml");
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((cert, key)) = tls {
            std::fs::write(dir.path().join("cert.pem"), cert).unwrap();
            std::fs::write(dir.path().join("key.pem"), key).unwrap();
            yaml.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                dir.path().join("cert.pem").display(),
                dir.path().join("key.pem").display()
            ));
        }
        std::fs::write(&config, yaml).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            port,
            _dir: dir,
        };
        assert!(
            wait_for(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "registry did not start"
        );
        Some(r)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn push_then_pull_round_trip() {
    require_kernel!();
    let Some(reg) = Registry::start() else { return };
    let d = Daemon::start("builtin");
    let name = format!("127.0.0.1:{}/test/busybox:1", reg.port);
    let insecure = format!("127.0.0.1:{}", reg.port);
    let tar = busybox_tarball().to_string_lossy().into_owned();
    d.shoal(&["image", "import", &tar, &name]).ok();
    // Without --insecure-registry the plain-HTTP registry is refused, with a hint.
    let r = d.shoal(&["image", "push", &name]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("--insecure-registry"), "{r:?}");
    let r = d
        .shoal(&["image", "push", "--insecure-registry", &insecure, &name])
        .ok();
    assert!(r.stdout.contains("pushed"), "{r:?}");
    let id = d.shoal(&["image", "ls", "-q"]).ok().stdout;
    d.shoal(&["image", "rm", &name]).ok();
    assert!(
        d.shoal(&["image", "ls", "-q"])
            .ok()
            .stdout
            .trim()
            .is_empty()
    );
    let r = d
        .shoal(&["image", "pull", "--insecure-registry", &insecure, &name])
        .ok();
    assert!(r.stdout.contains("done"), "{r:?}");
    assert_eq!(
        d.shoal(&["image", "ls", "-q"]).ok().stdout,
        id,
        "the same image came back"
    );
    let r = d
        .shoal(&[
            "container",
            "run",
            "--rm",
            "--network",
            "none",
            &name,
            "echo",
            "pulled",
        ])
        .ok();
    assert_eq!(r.stdout, "pulled\n");
    // An unknown tag is a clear error.
    let missing = format!("127.0.0.1:{}/test/nothing:1", reg.port);
    let r = d.shoal(&["image", "pull", "--insecure-registry", &insecure, &missing]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("test/nothing"), "{r:?}");
}

/// A registry with a certificate from a CA of the test's own: refused until the CA is put
/// in the daemon's certs.d, then push and pull work over TLS.
#[test]
fn tls_registry_with_a_private_ca() {
    require_kernel!();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let Some(reg) = Registry::start_with_tls(Some((server.pem(), server_key.serialize_pem())))
    else {
        return;
    };
    let d = Daemon::start("builtin");
    let host = format!("127.0.0.1:{}", reg.port);
    let name = format!("{host}/secure/busybox:1");
    let tar = busybox_tarball().to_string_lossy().into_owned();
    d.shoal(&["image", "import", &tar, &name]).ok();
    let r = d.shoal(&["image", "push", &name]);
    assert_ne!(r.code, 0, "an unknown CA is refused: {r:?}");
    assert!(
        r.stderr.contains("certs.d"),
        "the error says where the CA goes: {r:?}"
    );
    let certs = d.data_root.join("certs.d").join(&host);
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::write(certs.join("ca.crt"), ca.pem()).unwrap();
    let r = d.shoal(&["image", "push", &name]).ok();
    assert!(r.stdout.contains("pushed"), "{r:?}");
    d.shoal(&["image", "rm", &name]).ok();
    d.shoal(&["image", "pull", &name]).ok();
    let r = d
        .shoal(&[
            "container",
            "run",
            "--rm",
            "--network",
            "none",
            &name,
            "echo",
            "over-tls",
        ])
        .ok();
    assert_eq!(r.stdout, "over-tls\n");
}

#[test]
fn load_a_docker_save_archive() {
    require_kernel!();
    let d = Daemon::start("builtin");
    // Build a docker-save archive around the busybox root filesystem.
    let layer = std::fs::read(busybox_tarball()).unwrap();
    let diff_id = format!("sha256:{}", sha256_hex(&layer));
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["echo", "from-the-archive"], "Env": ["PATH=/bin"] },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] }
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!([{
        "Config": "cfg.json", "RepoTags": ["saved/busybox:v1"], "Layers": ["l1/layer.tar"]
    }]))
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("saved.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
    for (path, data) in [
        ("manifest.json", &manifest),
        ("cfg.json", &config),
        ("l1/layer.tar", &layer),
    ] {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, &data[..]).unwrap();
    }
    b.finish().unwrap();
    drop(b);
    let r = d
        .shoal(&["image", "load", "-i", &archive.to_string_lossy()])
        .ok();
    assert!(r.stdout.contains("saved/busybox:v1"), "{r:?}");
    let r = d
        .shoal(&[
            "container",
            "run",
            "--rm",
            "--network",
            "none",
            "saved/busybox:v1",
        ])
        .ok();
    assert_eq!(r.stdout, "from-the-archive\n", "the image's own Cmd runs");
    let r = d.shoal(&["image", "load", "-i", &busybox_tarball().to_string_lossy()]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("not an image archive"), "{r:?}");
}

fn sha256_hex(data: &[u8]) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(data)?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}
