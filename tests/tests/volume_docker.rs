//! The volume plugin protocol checked against Docker itself: the test plugin is driven by
//! the real dockerd (Debian's docker.io, started by the project's peer script in a network
//! namespace of its own) and by shoal, and both must ask it for the same volume lifecycle:
//! Create with the options, Mount with an ID, Unmount with that ID, Remove.

use std::path::{Path, PathBuf};
use std::process::Command;

use shoal_tests::plugin::PythonPlugin;
use shoal_tests::{Daemon, require_kernel};

/// The peer script: `$SHOAL_DOCKER_PEER`, or the workspace's sibling `shared/peers`.
fn peer_script() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SHOAL_DOCKER_PEER") {
        return Some(PathBuf::from(p));
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/peers/docker-peer.sh");
    p.exists().then_some(p)
}

/// Docker on the way up, taken down on drop; and the spec file that names our plugin to it.
struct Peer {
    script: PathBuf,
    host: String,
    spec: PathBuf,
    made_dir: bool,
}

const PEER: &str = "shoalvol";

impl Peer {
    fn up(script: &Path, plugin_name: &str, socket: &Path) -> Option<Peer> {
        let out = Command::new("bash")
            .arg(script)
            .args(["up", PEER])
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let host = text
            .lines()
            .find_map(|l| l.strip_prefix("export DOCKER_HOST="))?
            .to_string();
        // dockerd finds plugins in /etc/docker/plugins (it takes no flag for another place).
        let dir = Path::new("/etc/docker/plugins");
        let made_dir = !dir.exists();
        std::fs::create_dir_all(dir).ok()?;
        let spec = dir.join(format!("{plugin_name}.spec"));
        std::fs::write(&spec, format!("unix://{}\n", socket.display())).ok()?;
        Some(Peer {
            script: script.to_path_buf(),
            host,
            spec,
            made_dir,
        })
    }

    fn docker(&self, args: &[&str]) -> std::process::Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.host)
            .args(args)
            .output()
            .expect("running docker")
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.spec);
        if self.made_dir {
            let _ = std::fs::remove_dir(Path::new("/etc/docker/plugins"));
        }
        let _ = Command::new("bash")
            .arg(&self.script)
            .args(["down", PEER])
            .output();
    }
}

/// The lifecycle calls' names, whether each Unmount names its Mount's ID, the IDs'
/// lengths, and Create's options.
fn summary(
    calls: &[(String, serde_json::Value)],
) -> (Vec<String>, bool, Vec<usize>, serde_json::Value) {
    let names = calls.iter().map(|(c, _)| c.clone()).collect();
    let mounts: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|(c, _)| c == "VolumeDriver.Mount")
        .map(|(_, b)| &b["ID"])
        .collect();
    let unmounts: Vec<&serde_json::Value> = calls
        .iter()
        .filter(|(c, _)| c == "VolumeDriver.Unmount")
        .map(|(_, b)| &b["ID"])
        .collect();
    let paired = mounts == unmounts && !mounts.is_empty();
    let lengths = mounts
        .iter()
        .map(|id| id.as_str().map_or(0, str::len))
        .collect();
    let opts = calls
        .iter()
        .find(|(c, _)| c == "VolumeDriver.Create")
        .map(|(_, b)| b["Opts"].clone())
        .unwrap_or_default();
    (names, paired, lengths, opts)
}

#[test]
fn docker_and_shoal_ask_a_plugin_for_the_same_lifecycle() {
    require_kernel!();
    let Some(script) = peer_script() else {
        eprintln!(
            "SKIPPED: no Docker peer script (set SHOAL_DOCKER_PEER to shared/peers/docker-peer.sh)"
        );
        return;
    };
    let work = tempfile::tempdir().expect("dir");
    let plugins = work.path().join("plugins");
    let name = format!("oracle{}", std::process::id());
    let docker_plugin = PythonPlugin::start(&plugins, &name, &work.path().join("docker"), &[]);
    let Some(peer) = Peer::up(&script, &name, &plugins.join(format!("{name}.sock"))) else {
        eprintln!("SKIPPED: the Docker peer did not start");
        return;
    };
    let mount =
        format!("type=volume,source=pv,target=/data,volume-driver={name},volume-opt=size=1g");
    let r = peer.docker(&[
        "run",
        "--rm",
        "--mount",
        &mount,
        "busybox:local",
        "sh",
        "-c",
        "echo hi > /data/f",
    ]);
    assert!(
        r.status.success(),
        "docker run: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let r = peer.docker(&["volume", "rm", "pv"]);
    assert!(
        r.status.success(),
        "docker volume rm: {}",
        String::from_utf8_lossy(&r.stderr)
    );
    let docker = summary(&docker_plugin.lifecycle());
    drop(docker_plugin);
    drop(peer);

    let shoal_plugin = PythonPlugin::start(&plugins, &name, &work.path().join("shoal"), &[]);
    let dir = plugins.to_string_lossy().into_owned();
    let d = Daemon::start_with("builtin", &["--plugin-dir", &dir, "--plugin-timeout", "5s"]);
    d.import_busybox("busybox");
    d.shoal(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--mount",
        &mount,
        "busybox",
        "sh",
        "-c",
        "echo hi > /data/f",
    ])
    .ok();
    d.shoal(&["volume", "rm", "pv"]).ok();
    let shoal = summary(&shoal_plugin.lifecycle());
    eprintln!("docker: {docker:?}\nshoal:  {shoal:?}");
    assert_eq!(shoal, docker, "shoal asks the plugin what Docker asks it");
}
