//! The Python volume plugin of the tests (`tests/plugins/volume_plugin.py`), run as a child
//! process and killed on drop, with the calls it logged.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_for;

/// The Python test plugin, killed on drop.
pub struct PythonPlugin {
    child: Child,
    /// The file its calls are written to.
    pub log: PathBuf,
    /// Where its volumes' directories are.
    pub root: PathBuf,
}

impl PythonPlugin {
    /// Starts the plugin `name` with its socket in `plugins` and its files in `work`.
    pub fn start(plugins: &Path, name: &str, work: &Path, extra: &[&str]) -> PythonPlugin {
        std::fs::create_dir_all(plugins).expect("plugin dir");
        std::fs::create_dir_all(work).expect("plugin work dir");
        let socket = plugins.join(format!("{name}.sock"));
        let log = work.join(format!("{name}.calls"));
        let root = work.join(format!("{name}-volumes"));
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins/volume_plugin.py");
        let child = Command::new("python3")
            .arg(script)
            .args(["--socket", &socket.to_string_lossy()])
            .args(["--root", &root.to_string_lossy()])
            .args(["--log", &log.to_string_lossy()])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("starting python3");
        assert!(
            wait_for(Duration::from_secs(10), || socket.exists()),
            "the plugin did not start"
        );
        PythonPlugin { child, log, root }
    }

    /// The calls so far: (call, body).
    pub fn calls(&self) -> Vec<(String, serde_json::Value)> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .map(|v| {
                (
                    v["call"].as_str().unwrap_or_default().to_string(),
                    v["body"].clone(),
                )
            })
            .collect()
    }

    /// The `VolumeDriver` calls that make, mount, unmount and remove volumes.
    pub fn lifecycle(&self) -> Vec<(String, serde_json::Value)> {
        self.calls()
            .into_iter()
            .filter(|(c, _)| {
                matches!(
                    c.as_str(),
                    "VolumeDriver.Create"
                        | "VolumeDriver.Mount"
                        | "VolumeDriver.Unmount"
                        | "VolumeDriver.Remove"
                )
            })
            .collect()
    }
}

impl Drop for PythonPlugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
