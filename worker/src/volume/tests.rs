//! Volumes with the local driver and with a fake plugin on a unix socket.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

fn volumes(dir: &Path, plugin_dirs: Vec<PathBuf>) -> Volumes {
    Volumes::open(VolumesConfig {
        root: dir.join("volumes"),
        plugin_dirs,
        plugin_timeout: Duration::from_secs(2),
    })
    .expect("opens")
}

#[tokio::test]
async fn local_volumes_are_made_counted_and_removed() {
    let dir = tempfile::tempdir().expect("dir");
    let v = volumes(dir.path(), Vec::new());
    let none = BTreeMap::new();
    let labels = BTreeMap::from([("app".to_string(), "db".to_string())]);
    let data = v
        .create(Some("data"), "", &none, &labels, false)
        .await
        .expect("made");
    assert_eq!(data.driver, "local");
    assert!(Path::new(&data.mountpoint).is_dir(), "{}", data.mountpoint);
    assert_eq!(
        v.create(Some("data"), "local", &none, &none, false)
            .await
            .expect("again"),
        data,
        "making it again is no error and changes nothing"
    );
    assert_eq!(
        v.create(Some("data"), "", &none, &none, false)
            .await
            .expect("no driver named"),
        data,
        "a mount naming no driver takes the volume as it is"
    );
    let e = v
        .create(Some("data"), "nfsplug", &none, &none, false)
        .await
        .expect_err("other driver");
    assert!(
        e.to_string().contains("exists already with driver local"),
        "{e}"
    );
    let anon = v
        .create(None, "", &none, &none, true)
        .await
        .expect("anonymous");
    assert_eq!(anon.name.len(), 64);
    assert_eq!(v.list().expect("list").len(), 2);

    let (p1, first) = v.mount("data", "c1").await.expect("mount");
    let (p2, again) = v.mount("data", "c2").await.expect("mount");
    assert!(first && !again, "the driver mounts for the first user only");
    assert_eq!(p1, p2);
    assert_eq!(v.users("data").expect("users"), ["c1", "c2"]);
    let e = v.remove("data", false).await.expect_err("in use");
    assert!(
        e.to_string()
            .contains("in use by container c1, container c2"),
        "{e}"
    );
    v.unmount("data", "c1").await.expect("unmount");
    v.unmount("data", "c1").await.expect("twice is fine");
    v.unmount("data", "c2").await.expect("unmount");
    assert!(v.users("data").expect("users").is_empty());
    v.remove("data", false).await.expect("removed");
    assert!(!Path::new(&data.mountpoint).exists(), "its data goes too");
    assert!(matches!(v.get("data"), Err(VolumeError::NotFound(_))));
}

#[tokio::test]
async fn mounts_survive_reopening() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let v = volumes(dir.path(), Vec::new());
        v.create(Some("keep"), "", &BTreeMap::new(), &BTreeMap::new(), false)
            .await
            .expect("made");
        v.mount("keep", "c1").await.expect("mount");
    }
    let v = volumes(dir.path(), Vec::new());
    let (_, first) = v.mount("keep", "c2").await.expect("mount");
    assert!(
        !first,
        "a restarted daemon does not mount a mounted volume again"
    );
    assert_eq!(v.users("keep").expect("users"), ["c1", "c2"]);
}

#[tokio::test]
async fn bad_names_options_and_missing_plugins_are_named() {
    let dir = tempfile::tempdir().expect("dir");
    let v = volumes(dir.path(), vec![dir.path().join("plugins")]);
    let none = BTreeMap::new();
    let e = v
        .create(Some("a/b"), "", &none, &none, false)
        .await
        .expect_err("bad name");
    assert!(e.to_string().contains("invalid volume name"), "{e}");
    let opts = BTreeMap::from([("size".to_string(), "1g".to_string())]);
    let e = v
        .create(Some("x1"), "", &opts, &none, false)
        .await
        .expect_err("bad option");
    assert!(e.to_string().contains("no option \"size\""), "{e}");
    let e = v
        .create(Some("x2"), "nfsplug", &none, &none, false)
        .await
        .expect_err("no plugin");
    assert!(
        e.to_string().contains("volume plugin nfsplug not found"),
        "{e}"
    );
    assert!(v.list().expect("list").is_empty(), "nothing was recorded");
}

#[test]
fn filters_parse_and_match() {
    let vol = Volume {
        name: "web-data".into(),
        driver: "local".into(),
        mountpoint: String::new(),
        labels: BTreeMap::from([("tier".to_string(), "db".to_string())]),
        options: BTreeMap::new(),
        scope: Default::default(),
        created_unix: 0,
        anonymous: false,
    };
    let f = |s: &str| Filter::parse(s).expect("parses");
    assert!(f("name=data").matches(&vol, false));
    assert!(!f("driver=nfs").matches(&vol, false));
    assert!(f("label=tier").matches(&vol, false));
    assert!(f("label=tier=db").matches(&vol, false));
    assert!(!f("label=tier=web").matches(&vol, false));
    assert!(f("dangling=true").matches(&vol, false));
    assert!(!f("dangling=true").matches(&vol, true));
    assert!(Filter::parse("colour=red").is_err());
    assert!(Filter::parse("dangling=maybe").is_err());
}

/// A plugin on a unix socket that answers each call from `answers` (by call name), and
/// records the calls it got.
async fn fake_plugin(
    dir: &Path,
    name: &str,
    answers: Vec<(&'static str, u16, &'static str)>,
) -> Arc<Mutex<Vec<(String, serde_json::Value)>>> {
    std::fs::create_dir_all(dir).expect("dir");
    let listener = tokio::net::UnixListener::bind(dir.join(format!("{name}.sock"))).expect("bind");
    let calls: Arc<Mutex<Vec<(String, serde_json::Value)>>> = Arc::default();
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            // Read the head and the body its Content-Length names.
            let (head, body) = loop {
                let n = s.read(&mut chunk).await.unwrap_or(0);
                if n == 0 {
                    break (String::new(), Vec::new());
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_string();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break (
                            text[..end].to_string(),
                            buf[end + 4..end + 4 + len].to_vec(),
                        );
                    }
                }
            };
            let path = head
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            seen.lock().expect("calls").push((path.clone(), json));
            let (status, reply) = answers
                .iter()
                .find(|(call, _, _)| *call == path)
                .map(|(_, s, r)| (*s, *r))
                .unwrap_or((404, "{\"Err\": \"no such call\"}"));
            let response = format!(
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{reply}",
                reply.len()
            );
            let _ = s.write_all(response.as_bytes()).await;
        }
    });
    calls
}

#[tokio::test]
async fn a_plugin_is_activated_once_and_counted_mounts_call_it_once() {
    let dir = tempfile::tempdir().expect("dir");
    let plugins = dir.path().join("plugins");
    let calls = fake_plugin(
        &plugins,
        "fakeplug",
        vec![
            (
                "Plugin.Activate",
                200,
                r#"{"Implements": ["VolumeDriver"]}"#,
            ),
            (
                "VolumeDriver.Capabilities",
                200,
                r#"{"Capabilities": {"Scope": "global"}}"#,
            ),
            ("VolumeDriver.Get", 200, r#"{"Err": "no such volume"}"#),
            ("VolumeDriver.Create", 200, r#"{"Err": ""}"#),
            (
                "VolumeDriver.Mount",
                200,
                r#"{"Mountpoint": "/mnt/fake", "Err": ""}"#,
            ),
            ("VolumeDriver.Unmount", 200, r#"{}"#),
            (
                "VolumeDriver.Remove",
                500,
                r#"{"Err": "the disk is on fire"}"#,
            ),
        ],
    )
    .await;
    let v = volumes(dir.path(), vec![plugins]);
    let opts = BTreeMap::from([("size".to_string(), "1g".to_string())]);
    let made = v
        .create(Some("pv"), "fakeplug", &opts, &BTreeMap::new(), false)
        .await
        .expect("made");
    assert_eq!(made.scope, shoal_api::types::VolumeScope::Global);
    let (path, _) = v.mount("pv", "c1").await.expect("mount");
    assert_eq!(path, Path::new("/mnt/fake"));
    v.mount("pv", "c2").await.expect("mount");
    v.unmount("pv", "c2").await.expect("unmount");
    v.unmount("pv", "c1").await.expect("unmount");
    let e = v.remove("pv", false).await.expect_err("the plugin refuses");
    assert_eq!(
        e.to_string(),
        "volume plugin fakeplug: VolumeDriver.Remove: the disk is on fire (HTTP 500)"
    );
    assert!(v.get("pv").is_ok(), "a refused removal keeps the volume");
    let calls = calls.lock().expect("calls").clone();
    let names: Vec<&str> = calls.iter().map(|(c, _)| c.as_str()).collect();
    assert_eq!(
        names,
        [
            "Plugin.Activate",
            "VolumeDriver.Capabilities",
            "VolumeDriver.Get",
            "VolumeDriver.Create",
            "VolumeDriver.Mount",
            "VolumeDriver.Unmount",
            "VolumeDriver.Remove"
        ]
    );
    assert_eq!(calls[3].1["Name"], "pv");
    assert_eq!(calls[3].1["Opts"]["size"], "1g");
    assert_eq!(
        calls[4].1["ID"], calls[5].1["ID"],
        "Unmount names the Mount's ID"
    );
    assert!(calls[4].1["ID"].as_str().is_some_and(|id| id.len() == 64));
}

#[tokio::test]
async fn a_plugin_that_answers_garbage_or_nothing_is_named() {
    let dir = tempfile::tempdir().expect("dir");
    let plugins = dir.path().join("plugins");
    fake_plugin(
        &plugins,
        "junk",
        vec![
            (
                "Plugin.Activate",
                200,
                r#"{"Implements": ["VolumeDriver"]}"#,
            ),
            ("VolumeDriver.Capabilities", 200, "this is not json"),
        ],
    )
    .await;
    fake_plugin(
        &plugins,
        "notavolume",
        vec![(
            "Plugin.Activate",
            200,
            r#"{"Implements": ["NetworkDriver"]}"#,
        )],
    )
    .await;
    // A socket nobody serves: tried again until the window closes (shortened here by the
    // call's own time limit).
    let v = volumes(dir.path(), vec![plugins]);
    let none = BTreeMap::new();
    let e = v
        .create(Some("j1"), "junk", &none, &none, false)
        .await
        .expect_err("garbage");
    assert!(
        e.to_string()
            .contains("volume plugin junk: VolumeDriver.Capabilities: its answer is not JSON"),
        "{e}"
    );
    let e = v
        .create(Some("j2"), "notavolume", &none, &none, false)
        .await
        .expect_err("not a volume driver");
    assert!(
        e.to_string()
            .contains("implements NetworkDriver but not VolumeDriver"),
        "{e}"
    );
    assert!(v.list().expect("list").is_empty());
}
