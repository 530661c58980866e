//! Parsers for flag values, each with an error that names the flag, the bad value and
//! the form it expects.

use shoal_api::engine::PortMapping;

/// A flag value the user got wrong; the binary exits 64 with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses a byte size: `512m`, `1g`, `1048576`, `64k`, `100b`.
pub fn parse_bytes(flag: &str, s: &str) -> Result<i64, UsageError> {
    shoal_api::mount::parse_bytes(flag, s).map_err(UsageError)
}

/// Parses `--cpus 1.5` into nano-CPUs.
pub fn parse_cpus(s: &str) -> Result<i64, UsageError> {
    let v: f64 = s.trim().parse().map_err(|_| {
        UsageError(format!(
            "invalid --cpus \"{s}\": use a number of CPUs such as 0.5 or 2"
        ))
    })?;
    if !v.is_finite() || v <= 0.0 {
        return Err(UsageError(format!(
            "invalid --cpus \"{s}\": it must be more than 0, for example 0.5"
        )));
    }
    Ok((v * 1e9).round() as i64)
}

/// Parses `-p [IP:]HOSTPORT:PORT[/tcp|udp]` (or `PORT`, publishing on the same port).
pub fn parse_port(s: &str) -> Result<PortMapping, UsageError> {
    let bad = |why: &str| {
        UsageError(format!(
            "invalid -p \"{s}\": {why}; use [IP:]HOSTPORT:PORT[/tcp|udp], for example 8080:80 or 127.0.0.1:8080:80/tcp"
        ))
    };
    let (spec, protocol) = match s.rsplit_once('/') {
        Some((a, p)) => (a, p.to_ascii_lowercase()),
        None => (s, "tcp".to_string()),
    };
    if protocol != "tcp" && protocol != "udp" {
        return Err(bad("the protocol must be tcp or udp"));
    }
    let parts: Vec<&str> = spec.rsplitn(3, ':').collect();
    let port = |p: &str| -> Result<u32, UsageError> {
        match p.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => Ok(n),
            _ => Err(bad(&format!("\"{p}\" is not a port between 1 and 65535"))),
        }
    };
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [c] => (String::new(), port(c)?, port(c)?),
        [c, h] => (String::new(), port(h)?, port(c)?),
        [c, h, ip] => {
            let ip = ip.trim_start_matches('[').trim_end_matches(']');
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(bad(&format!("\"{ip}\" is not an IP address")));
            }
            (ip.to_string(), port(h)?, port(c)?)
        }
        _ => return Err(bad("too many parts")),
    };
    Ok(PortMapping {
        host_ip,
        host_port,
        container_port,
        protocol,
    })
}

/// Parses `-e K=V`, or `-e K` taking K from the client's environment (dropped if unset).
pub fn parse_env(s: &str) -> Result<Option<String>, UsageError> {
    let key = s.split('=').next().unwrap_or_default();
    if key.is_empty() || key.contains(char::is_whitespace) {
        return Err(UsageError(format!(
            "invalid -e \"{s}\": use KEY=VALUE, or KEY to pass the variable from this shell"
        )));
    }
    if s.contains('=') {
        return Ok(Some(s.to_string()));
    }
    Ok(std::env::var(s).ok().map(|v| format!("{s}={v}")))
}

/// Reads an `--env-file`: KEY=VALUE lines, `#` comments and blank lines skipped.
pub fn read_env_file(path: &str) -> Result<Vec<String>, UsageError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| UsageError(format!("cannot read --env-file {path}: {e}")))?;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(v) = parse_env(line)? {
            out.push(v);
        }
    }
    Ok(out)
}

/// Parses `-l K=V`.
pub fn parse_label(s: &str) -> Result<(String, String), UsageError> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        None if !s.is_empty() => Ok((s.to_string(), String::new())),
        _ => Err(UsageError(format!("invalid label \"{s}\": use KEY=VALUE"))),
    }
}

/// Parses `--since`: a duration ago (`10m`, `2h`, `30s`), RFC 3339, or Unix seconds.
pub fn parse_since(s: &str, now_nanos: i64) -> Result<i64, UsageError> {
    let bad = || {
        UsageError(format!(
            "invalid --since \"{s}\": use a duration such as 10m or 2h, an RFC 3339 time, or Unix seconds"
        ))
    };
    if let Ok(secs) = s.parse::<f64>() {
        if !secs.is_finite() || secs < 0.0 {
            return Err(bad());
        }
        return Ok((secs * 1e9) as i64);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos()).map_err(|_| bad());
    }
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?);
    let n: f64 = num
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0)
        .ok_or_else(bad)?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        "ms" => n / 1000.0,
        _ => return Err(bad()),
    };
    Ok(now_nanos - (secs * 1e9) as i64)
}

/// Parses `--memory-swap`: memory plus swap as a byte size, or `-1` for unlimited swap.
pub fn parse_memory_swap(s: &str) -> Result<i64, UsageError> {
    if s.trim() == "-1" {
        return Ok(-1);
    }
    parse_bytes("--memory-swap", s).map_err(|_| {
        UsageError(format!(
            "invalid --memory-swap \"{s}\": use a size such as 1g (memory plus swap), or -1 for unlimited swap"
        ))
    })
}

/// Parses a signal for `flag`: a name with or without `SIG` in any case (`TERM`,
/// `sigint`), or a number. Returns the canonical name, such as `SIGTERM`, which the daemon
/// takes as it is.
pub fn parse_signal(flag: &str, s: &str) -> Result<String, UsageError> {
    use nix::sys::signal::Signal;
    let bad = || {
        UsageError(format!(
            "invalid {flag} \"{s}\": use a signal name such as SIGTERM, TERM or KILL, or a number such as 15"
        ))
    };
    let t = s.trim();
    let signal = if let Ok(n) = t.parse::<i32>() {
        Signal::try_from(n).map_err(|_| bad())?
    } else {
        let upper = t.to_ascii_uppercase();
        let name = if upper.starts_with("SIG") {
            upper
        } else {
            format!("SIG{upper}")
        };
        name.parse::<Signal>().map_err(|_| bad())?
    };
    Ok(signal.as_str().to_string())
}

/// Parses `--tail`: a number of lines, or `all` (-1, every line).
pub fn parse_tail(s: &str) -> Result<i64, UsageError> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(-1);
    }
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            UsageError(format!(
                "invalid --tail \"{s}\": use a number of lines, or all"
            ))
        })
}

/// Parses a number of seconds for `flag` (`--stop-timeout`, `stop -t`): 0 or more.
pub fn parse_seconds(flag: &str, s: &str) -> Result<i64, UsageError> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|n| *n >= 0)
        .ok_or_else(|| {
            UsageError(format!(
                "invalid {flag} \"{s}\": use a whole number of seconds, 0 or more, for example 10"
            ))
        })
}

/// Parses `--pids-limit`: a number of processes, or -1 (or 0) for no limit, which is 0 on
/// the wire.
pub fn parse_pids_limit(s: &str) -> Result<i64, UsageError> {
    match s.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        Ok(-1 | 0) => Ok(0),
        _ => Err(UsageError(format!(
            "invalid --pids-limit \"{s}\": use a number of processes such as 100, or -1 for no limit"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        for (input, want) in [
            ("512m", 512 << 20),
            ("512M", 512 << 20),
            ("1g", 1 << 30),
            ("1G", 1 << 30),
            ("64k", 64 << 10),
            ("64KB", 64 << 10),
            ("1048576", 1048576),
            ("100b", 100),
            ("1.5g", 3 << 29),
            ("6mb", 6 << 20),
        ] {
            assert_eq!(parse_bytes("--memory", input).unwrap(), want, "{input}");
        }
        for bad in [
            "0", "-1", "12q", "", "m", "1x5", "0m", "nan", "inf", "1e30g",
        ] {
            let e = parse_bytes("--memory", bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!(
                    "invalid --memory \"{bad}\": use a number with an optional unit b, k, m or g, for example 512m"
                )
            );
        }
    }

    #[test]
    fn memory_swap() {
        for (input, want) in [("-1", -1), ("1g", 1 << 30), ("2048m", 2 << 30)] {
            assert_eq!(parse_memory_swap(input).unwrap(), want, "{input}");
        }
        for bad in ["0", "-2", "lots"] {
            let e = parse_memory_swap(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid --memory-swap \"{bad}\"")),
                "{e}"
            );
            assert!(e.contains("-1 for unlimited"), "{e}");
        }
    }

    #[test]
    fn cpus() {
        for (input, want) in [
            ("1.5", 1_500_000_000),
            ("0.01", 10_000_000),
            ("2", 2_000_000_000),
            (" 4 ", 4_000_000_000),
        ] {
            assert_eq!(parse_cpus(input).unwrap(), want, "{input}");
        }
        for bad in ["0", "-1", "abc", "", "nan", "inf"] {
            let e = parse_cpus(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid --cpus \"{bad}\"")), "{e}");
        }
    }

    #[test]
    fn ports() {
        for (input, ip, host, container, proto) in [
            ("8080:80", "", 8080, 80, "tcp"),
            ("80", "", 80, 80, "tcp"),
            ("53:53/udp", "", 53, 53, "udp"),
            ("8080:80/TCP", "", 8080, 80, "tcp"),
            ("127.0.0.1:53:5353/udp", "127.0.0.1", 53, 5353, "udp"),
            ("0.0.0.0:1:65535", "0.0.0.0", 1, 65535, "tcp"),
            ("[::1]:8080:80", "::1", 8080, 80, "tcp"),
        ] {
            let p = parse_port(input).unwrap();
            assert_eq!(
                (
                    p.host_ip.as_str(),
                    p.host_port,
                    p.container_port,
                    p.protocol.as_str()
                ),
                (ip, host, container, proto),
                "{input}"
            );
        }
        for (bad, why) in [
            ("0:80", "\"0\" is not a port"),
            ("8080:70000", "\"70000\" is not a port"),
            ("a:b", "is not a port"),
            ("8080:80/sctp", "tcp or udp"),
            ("1.2.3:80:80", "\"1.2.3\" is not an IP address"),
            ("", "is not a port"),
            ("1:2:3:4", "is not an IP address"),
        ] {
            let e = parse_port(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid -p \"{bad}\"")),
                "{bad}: {e}"
            );
            assert!(e.contains(why), "{bad}: {e}");
            assert!(e.contains("[IP:]HOSTPORT:PORT[/tcp|udp]"), "{bad}: {e}");
        }
    }

    #[test]
    fn env() {
        // PATH is set wherever tests run; setting a variable of our own would race with
        // the other test threads reading the environment.
        let path = std::env::var("PATH").expect("PATH is set");
        let from_shell = format!("PATH={path}");
        for (input, want) in [
            ("A=1", Some("A=1")),
            ("A=", Some("A=")),
            ("A=b=c", Some("A=b=c")),
            ("PATH", Some(from_shell.as_str())),
            ("SHOAL_SURELY_UNSET_VAR", None),
        ] {
            assert_eq!(parse_env(input).unwrap().as_deref(), want, "{input}");
        }
        for bad in ["=x", "", "A B=1"] {
            let e = parse_env(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid -e \"{bad}\"")), "{e}");
        }
    }

    #[test]
    fn env_files() {
        let path = std::env::temp_dir().join(format!("shoal-cli-env-{}", std::process::id()));
        struct Remove(std::path::PathBuf);
        impl Drop for Remove {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
        let _guard = Remove(path.clone());
        std::fs::write(
            &path,
            "# a comment\n\nA=1\n  B=two words  \nSHOAL_SURELY_UNSET_VAR\n",
        )
        .unwrap();
        let got = read_env_file(&path.to_string_lossy()).unwrap();
        assert_eq!(got, vec!["A=1", "B=two words"]);
        std::fs::write(&path, "A=1\n=bad\n").unwrap();
        assert!(read_env_file(&path.to_string_lossy()).is_err());
        let e = read_env_file("/nonexistent/env").unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read --env-file /nonexistent/env"),
            "{e}"
        );
    }

    #[test]
    fn labels() {
        for (input, k, v) in [("k=v", "k", "v"), ("k", "k", ""), ("k=a=b", "k", "a=b")] {
            assert_eq!(parse_label(input).unwrap(), (k.into(), v.into()), "{input}");
        }
        for bad in ["", "=v"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signals() {
        for (input, want) in [
            ("TERM", "SIGTERM"),
            ("SIGTERM", "SIGTERM"),
            ("sigint", "SIGINT"),
            ("kill", "SIGKILL"),
            ("9", "SIGKILL"),
            ("15", "SIGTERM"),
            ("HUP", "SIGHUP"),
            ("usr1", "SIGUSR1"),
        ] {
            assert_eq!(parse_signal("--signal", input).unwrap(), want, "{input}");
        }
        for bad in ["", "0", "-1", "999", "NOPE", "SIG", "SIGSIGTERM"] {
            let e = parse_signal("--signal", bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid --signal \"{bad}\"")), "{e}");
            assert!(e.contains("SIGTERM"), "{e}");
        }
    }

    #[test]
    fn tails() {
        for (input, want) in [("all", -1), ("ALL", -1), ("0", 0), ("10", 10)] {
            assert_eq!(parse_tail(input).unwrap(), want, "{input}");
        }
        for bad in ["x", "-1", "", "1.5"] {
            let e = parse_tail(bad).unwrap_err().to_string();
            assert_eq!(
                e,
                format!("invalid --tail \"{bad}\": use a number of lines, or all")
            );
        }
    }

    #[test]
    fn seconds() {
        for (input, want) in [("0", 0), ("10", 10), (" 3 ", 3)] {
            assert_eq!(parse_seconds("-t", input).unwrap(), want, "{input}");
        }
        for bad in ["-1", "x", "1.5", ""] {
            let e = parse_seconds("-t", bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid -t \"{bad}\"")), "{e}");
        }
    }

    #[test]
    fn pids_limits() {
        for (input, want) in [("100", 100), ("1", 1), ("-1", 0), ("0", 0)] {
            assert_eq!(parse_pids_limit(input).unwrap(), want, "{input}");
        }
        for bad in ["-2", "x", "1.5", ""] {
            let e = parse_pids_limit(bad).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("invalid --pids-limit \"{bad}\"")),
                "{e}"
            );
        }
    }

    #[test]
    fn since() {
        let now = 1_000_000_000_000_000_000;
        for (input, want) in [
            ("10m", now - 600_000_000_000),
            ("30s", now - 30_000_000_000),
            ("2h", now - 7_200_000_000_000),
            ("1d", now - 86_400_000_000_000),
            ("500ms", now - 500_000_000),
            ("1700000000", 1_700_000_000_000_000_000),
            ("1700000000.5", 1_700_000_000_500_000_000),
            ("2023-11-14T22:13:20Z", 1_700_000_000_000_000_000),
            ("2023-11-14T23:13:20+01:00", 1_700_000_000_000_000_000),
        ] {
            assert_eq!(parse_since(input, now).unwrap(), want, "{input}");
        }
        for bad in ["yesterday", "-10m", "-5", "10y", "m", ""] {
            let e = parse_since(bad, now).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid --since \"{bad}\"")), "{e}");
        }
    }
}
