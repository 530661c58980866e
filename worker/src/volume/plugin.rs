//! Volume plugins over Docker's plugin protocol (the one every published volume plugin
//! speaks): found by a socket `NAME.sock` or a spec file `NAME.spec` (an address) or
//! `NAME.json` (`{"Name", "Addr"}`) in the plugin directories, activated once
//! (`Plugin.Activate` must list `VolumeDriver`), then asked with JSON bodies POSTed over
//! HTTP/1.1 (`/VolumeDriver.Create`, `.Mount`, ...). As Docker does, a plugin that cannot
//! be reached is tried again with a backoff of 1, 2, 4 ... seconds for up to 30 s; an
//! answer that is not 200 carries the plugin's `Err`; every call has a time limit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use shoal_api::types::{PluginInfo, Volume, VolumeScope};

use super::VolumeError;
use super::driver::VolumeDriver;

/// The media type plugin calls accept (Docker's).
const MIME: &str = "application/vnd.docker.plugins.v1.2+json";
/// How long a plugin that cannot be reached is tried again (Docker's).
const RETRY_WINDOW: Duration = Duration::from_secs(30);

/// Where a plugin answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// A unix socket.
    Unix(PathBuf),
    /// `host:port`, plain HTTP.
    Tcp(String),
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix://{}", p.display()),
            Address::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// A plugin found in the plugin directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Its name.
    pub name: String,
    /// Where it answers, or why that could not be read.
    pub address: Result<Address, String>,
}

/// Reads a spec file's address: `unix:///path`, `tcp://host:port`, `http://host:port`.
fn parse_address(text: &str, spec_dir: &Path) -> Result<Address, String> {
    let t = text.trim();
    if let Some(p) = t.strip_prefix("unix://") {
        let p = Path::new(p);
        return Ok(Address::Unix(if p.is_absolute() {
            p.to_path_buf()
        } else {
            spec_dir.join(p)
        }));
    }
    if let Some(a) = t
        .strip_prefix("tcp://")
        .or_else(|| t.strip_prefix("http://"))
    {
        return Ok(Address::Tcp(a.trim_end_matches('/').to_string()));
    }
    if t.starts_with("https://") {
        return Err("plugins over TLS (https://) are not supported yet: serve it on a unix socket or plain tcp://".into());
    }
    Err(format!(
        "\"{t}\" is not a plugin address: use unix:///path/to.sock or tcp://host:port"
    ))
}

/// Every plugin in `dirs` (the first of a name wins): `NAME.sock` and `NAME/NAME.sock`
/// (sockets), `NAME.spec` and `NAME.json` (addresses).
pub fn discover(dirs: &[PathBuf]) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut add = |name: String, address: Result<Address, String>| {
        if !name.is_empty() && !out.iter().any(|f| f.name == name) {
            out.push(Found { name, address });
        }
    };
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            let stem = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            match path.extension().and_then(|e| e.to_str()) {
                Some("sock") => add(stem, Ok(Address::Unix(path.clone()))),
                Some("spec") => {
                    let address = std::fs::read_to_string(&path)
                        .map_err(|e| format!("reading {}: {e}", path.display()))
                        .and_then(|t| parse_address(&t, dir));
                    add(stem, address)
                }
                Some("json") => {
                    let address = std::fs::read(&path)
                        .map_err(|e| format!("reading {}: {e}", path.display()))
                        .and_then(|raw| {
                            let v: Value = serde_json::from_slice(&raw)
                                .map_err(|e| format!("{} is not JSON: {e}", path.display()))?;
                            let addr = v["Addr"]
                                .as_str()
                                .ok_or_else(|| format!("{} has no \"Addr\"", path.display()))?;
                            parse_address(addr, dir)
                        });
                    add(stem, address)
                }
                None if path.is_dir() => {
                    let sock = path.join(format!("{stem}.sock"));
                    if sock.exists() {
                        add(stem, Ok(Address::Unix(sock)));
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// A plugin's client.
pub struct Plugin {
    name: String,
    address: Address,
    timeout: Duration,
    activated: tokio::sync::OnceCell<Vec<String>>,
}

impl Plugin {
    /// A client of the plugin `name` at `address`; every call may take up to `timeout`.
    pub fn new(name: &str, address: Address, timeout: Duration) -> Plugin {
        Plugin {
            name: name.to_string(),
            address,
            timeout,
            activated: tokio::sync::OnceCell::new(),
        }
    }

    fn error(&self, call: &str, message: impl Into<String>) -> VolumeError {
        VolumeError::Plugin {
            plugin: self.name.clone(),
            call: call.to_string(),
            message: message.into(),
        }
    }

    /// One POST, without retries: the answer's status and body.
    async fn post(&self, call: &str, body: &Value) -> Result<(u16, Bytes), String> {
        let payload = serde_json::to_vec(body).map_err(|e| e.to_string())?;
        let request = hyper::Request::post(format!("/{call}"))
            .header(hyper::header::HOST, "plugin")
            .header(hyper::header::ACCEPT, MIME)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(payload)))
            .map_err(|e| e.to_string())?;
        let unreachable = |e: std::io::Error| format!("{UNREACHABLE}{e}");
        match &self.address {
            Address::Unix(p) => match tokio::net::UnixStream::connect(p).await {
                Ok(stream) => exchange(stream, request).await,
                Err(e) => Err(unreachable(e)),
            },
            Address::Tcp(a) => match tokio::net::TcpStream::connect(a).await {
                Ok(stream) => exchange(stream, request).await,
                Err(e) => Err(unreachable(e)),
            },
        }
    }

    /// Calls `call` with `body`: the JSON answer, or the plugin's error. A plugin that
    /// cannot be reached is tried again for up to 30 s.
    pub async fn call(&self, call: &str, body: Value) -> Result<Value, VolumeError> {
        let started = Instant::now();
        let mut wait = Duration::from_secs(1);
        let answer = loop {
            match tokio::time::timeout(self.timeout, self.post(call, &body)).await {
                Err(_) => {
                    return Err(self.error(
                        call,
                        format!("no answer within {} s", self.timeout.as_secs()),
                    ));
                }
                Ok(Ok(a)) => break a,
                Ok(Err(e)) if e.starts_with(UNREACHABLE) => {
                    if started.elapsed() + wait >= RETRY_WINDOW {
                        return Err(self.error(
                            call,
                            format!(
                                "cannot reach it at {} ({}) for {} s",
                                self.address,
                                &e[UNREACHABLE.len()..],
                                RETRY_WINDOW.as_secs()
                            ),
                        ));
                    }
                    tracing::warn!(plugin = %self.name, "cannot reach the plugin ({e}): trying again in {} s", wait.as_secs());
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_WINDOW);
                }
                Ok(Err(e)) => return Err(self.error(call, format!("the call broke off: {e}"))),
            }
        };
        tracing::debug!(plugin = %self.name, call, status = answer.0, ms = started.elapsed().as_secs_f64() * 1e3, "plugin call");
        self.read_answer(call, answer)
    }

    /// Calls `call` once, waiting at most [`QUICK`]: for questions that must not hold up
    /// the caller when a plugin is down (listing, looking a name up).
    async fn call_quick(&self, call: &str, body: Value) -> Result<Value, VolumeError> {
        match tokio::time::timeout(QUICK.min(self.timeout), self.post(call, &body)).await {
            Err(_) => Err(self.error(
                call,
                format!("no answer within {} s", QUICK.min(self.timeout).as_secs()),
            )),
            Ok(Ok(a)) => self.read_answer(call, a),
            Ok(Err(e)) => Err(self.error(call, e)),
        }
    }

    /// The JSON of an answer, or the plugin's error.
    fn read_answer(&self, call: &str, (status, bytes): (u16, Bytes)) -> Result<Value, VolumeError> {
        let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
        if status != 200 {
            let text = match &parsed {
                Ok(v) if v["Err"].as_str().is_some_and(|e| !e.is_empty()) => {
                    v["Err"].as_str().unwrap_or_default().to_string()
                }
                _ => String::from_utf8_lossy(&bytes).trim().to_string(),
            };
            return Err(self.error(call, format!("{text} (HTTP {status})")));
        }
        let v = parsed.map_err(|e| {
            self.error(
                call,
                format!(
                    "its answer is not JSON ({e}): {}",
                    String::from_utf8_lossy(&bytes)
                        .chars()
                        .take(200)
                        .collect::<String>()
                ),
            )
        })?;
        if let Some(e) = v
            .get("Err")
            .and_then(Value::as_str)
            .filter(|e| !e.is_empty())
        {
            return Err(self.error(call, e));
        }
        Ok(v)
    }

    /// What the plugin implements: `Plugin.Activate`, asked once (quickly when `quick`);
    /// a failed activation is asked again next time.
    async fn activate(&self, quick: bool) -> Result<&Vec<String>, VolumeError> {
        self.activated
            .get_or_try_init(|| async {
                let v = if quick {
                    self.call_quick("Plugin.Activate", json!({})).await?
                } else {
                    self.call("Plugin.Activate", json!({})).await?
                };
                let list = v["Implements"].as_array().ok_or_else(|| {
                    self.error("Plugin.Activate", "its answer lists no \"Implements\"")
                })?;
                Ok(list
                    .iter()
                    .filter_map(|x| x.as_str().map(String::from))
                    .collect())
            })
            .await
    }

    /// Whether the plugin is a volume driver.
    async fn check_volume_driver(&self, quick: bool) -> Result<(), VolumeError> {
        let implements = self.activate(quick).await?;
        if !implements.iter().any(|i| i == "VolumeDriver") {
            return Err(self.error(
                "Plugin.Activate",
                format!(
                    "it implements {} but not VolumeDriver",
                    implements.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// The volumes the plugin has (`VolumeDriver.List`, asked once, quickly): names and
    /// mountpoints (empty where it gave none).
    pub async fn list_volumes(&self) -> Result<Vec<(String, String)>, VolumeError> {
        self.check_volume_driver(true).await?;
        let v = self.call_quick("VolumeDriver.List", json!({})).await?;
        Ok(v["Volumes"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| {
                        let name = v["Name"].as_str()?.to_string();
                        let mp = v["Mountpoint"].as_str().unwrap_or_default().to_string();
                        Some((name, mp))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// Whether the plugin has volume `name` (`VolumeDriver.Get`, asked once, quickly).
    pub async fn has_volume(&self, name: &str) -> bool {
        self.check_volume_driver(true).await.is_ok()
            && self
                .call_quick("VolumeDriver.Get", json!({"Name": name}))
                .await
                .is_ok()
    }

    /// Its scope, as `VolumeDriver.Capabilities` says (local when it says nothing).
    pub async fn capabilities_scope(&self) -> Result<VolumeScope, VolumeError> {
        self.check_volume_driver(false).await?;
        let v = self.call("VolumeDriver.Capabilities", json!({})).await?;
        Ok(match v["Capabilities"]["Scope"].as_str() {
            Some("global") => VolumeScope::Global,
            _ => VolumeScope::Local,
        })
    }

    /// What the plugin implements (`Plugin.Activate`, asked once).
    pub async fn implements(&self) -> Result<Vec<String>, VolumeError> {
        self.activate(false).await.cloned()
    }

    async fn volume_call(&self, call: &str, body: Value) -> Result<Value, VolumeError> {
        self.check_volume_driver(false).await?;
        self.call(call, body).await
    }

    /// The plugin as `plugin ls` shows it.
    pub async fn info(&self) -> PluginInfo {
        let (implements, error) = match self.activate(true).await {
            Ok(i) => (i.clone(), String::new()),
            Err(e) => (Vec::new(), e.to_string()),
        };
        PluginInfo {
            name: self.name.clone(),
            address: self.address.to_string(),
            implements,
            error,
        }
    }
}

/// A connection error's text carries this first: such calls are tried again.
/// How long a quick question waits.
const QUICK: Duration = Duration::from_secs(5);
const UNREACHABLE: &str = "unreachable: ";

/// Sends `request` over `stream`: the answer's status and body.
async fn exchange<S>(
    stream: S,
    request: hyper::Request<Full<Bytes>>,
) -> Result<(u16, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

fn mountpoint(plugin: &Plugin, call: &str, v: &Value) -> Result<PathBuf, VolumeError> {
    match v["Mountpoint"].as_str() {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        Some(p) => Err(plugin.error(
            call,
            format!("its Mountpoint \"{p}\" is not an absolute path"),
        )),
        None => Err(plugin.error(call, "its answer has no Mountpoint")),
    }
}

impl VolumeDriver for Plugin {
    fn name(&self) -> &str {
        &self.name
    }

    fn scope(&self) -> BoxFuture<'_, Result<VolumeScope, VolumeError>> {
        Box::pin(self.capabilities_scope())
    }

    fn create<'a>(
        &'a self,
        name: &'a str,
        opts: &'a BTreeMap<String, String>,
    ) -> BoxFuture<'a, Result<(), VolumeError>> {
        Box::pin(async move {
            // As Docker does: a volume the plugin has already (made out of band, or by
            // another node for a cluster-wide plugin) is taken as it is.
            if self
                .volume_call("VolumeDriver.Get", json!({"Name": name}))
                .await
                .is_ok()
            {
                return Ok(());
            }
            self.volume_call("VolumeDriver.Create", json!({"Name": name, "Opts": opts}))
                .await
                .map(|_| ())
        })
    }

    fn remove<'a>(&'a self, volume: &'a Volume) -> BoxFuture<'a, Result<(), VolumeError>> {
        Box::pin(async move {
            self.volume_call("VolumeDriver.Remove", json!({"Name": volume.name}))
                .await
                .map(|_| ())
        })
    }

    fn mount<'a>(
        &'a self,
        volume: &'a Volume,
        id: &'a str,
    ) -> BoxFuture<'a, Result<PathBuf, VolumeError>> {
        Box::pin(async move {
            let v = self
                .volume_call("VolumeDriver.Mount", json!({"Name": volume.name, "ID": id}))
                .await?;
            mountpoint(self, "VolumeDriver.Mount", &v)
        })
    }

    fn unmount<'a>(
        &'a self,
        volume: &'a Volume,
        id: &'a str,
    ) -> BoxFuture<'a, Result<(), VolumeError>> {
        Box::pin(async move {
            self.volume_call(
                "VolumeDriver.Unmount",
                json!({"Name": volume.name, "ID": id}),
            )
            .await
            .map(|_| ())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_are_found_by_socket_spec_and_json() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        std::fs::write(d.join("alpha.sock"), "").expect("write");
        std::fs::write(d.join("beta.spec"), "tcp://127.0.0.1:9000\n").expect("write");
        std::fs::write(
            d.join("gamma.json"),
            r#"{"Name": "gamma", "Addr": "unix:///run/g.sock"}"#,
        )
        .expect("write");
        std::fs::write(d.join("delta.spec"), "https://example.invalid").expect("write");
        std::fs::create_dir(d.join("eps")).expect("dir");
        std::fs::write(d.join("eps").join("eps.sock"), "").expect("write");
        let found = discover(&[d.to_path_buf()]);
        let get = |n: &str| {
            found
                .iter()
                .find(|f| f.name == n)
                .map(|f| f.address.clone())
        };
        assert_eq!(get("alpha"), Some(Ok(Address::Unix(d.join("alpha.sock")))));
        assert_eq!(get("beta"), Some(Ok(Address::Tcp("127.0.0.1:9000".into()))));
        assert_eq!(get("gamma"), Some(Ok(Address::Unix("/run/g.sock".into()))));
        assert!(
            get("delta")
                .expect("listed")
                .expect_err("tls")
                .contains("TLS")
        );
        assert_eq!(
            get("eps"),
            Some(Ok(Address::Unix(d.join("eps").join("eps.sock"))))
        );
    }
}
