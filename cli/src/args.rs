//! Parsers for flag values, each with an error that names the flag, the bad value and
//! the form it expects.

use shoal_api::engine::PortMapping;

/// A flag value the user got wrong; the binary exits 64 with it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Parses a byte size: `512m`, `1g`, `1048576`, `64k`, `100b`.
pub fn parse_bytes(flag: &str, s: &str) -> Result<i64, UsageError> {
    let bad = || {
        UsageError(format!(
            "invalid {flag} \"{s}\": use a number with an optional unit b, k, m or g, for example 512m"
        ))
    };
    let t = s.trim().to_ascii_lowercase();
    let t = t
        .strip_suffix('b')
        .filter(|r| !r.is_empty() && r.ends_with(['k', 'm', 'g']))
        .unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('b') => (&t[..t.len() - 1], 1),
        Some(_) => (t, 1),
        None => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    if !value.is_finite() || value <= 0.0 {
        return Err(bad());
    }
    let bytes = value * mult as f64;
    if bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
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
        return Ok((secs * 1e9) as i64);
    }
    if let Ok(t) = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return i64::try_from(t.unix_timestamp_nanos()).map_err(|_| bad());
    }
    let (num, unit) = s.split_at(s.find(|c: char| c.is_ascii_alphabetic()).ok_or_else(bad)?);
    let n: f64 = num.parse().map_err(|_| bad())?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes() {
        for (input, want) in [
            ("512m", 512 << 20),
            ("1g", 1 << 30),
            ("1G", 1 << 30),
            ("64k", 64 << 10),
            ("1048576", 1048576),
            ("100b", 100),
            ("1.5g", 3 << 29),
            ("6mb", 6 << 20),
        ] {
            assert_eq!(parse_bytes("--memory", input).unwrap(), want, "{input}");
        }
        for bad in ["0", "-1", "12q", "", "m", "1x5"] {
            let e = parse_bytes("--memory", bad).unwrap_err().to_string();
            assert!(e.contains(&format!("invalid --memory \"{bad}\"")), "{e}");
            assert!(e.contains("for example 512m"), "{e}");
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_cpus("0.01").unwrap(), 10_000_000);
        assert!(parse_cpus("0").is_err());
        assert!(
            parse_cpus("abc")
                .unwrap_err()
                .to_string()
                .contains("--cpus")
        );
    }

    #[test]
    fn ports() {
        let p = parse_port("8080:80").unwrap();
        assert_eq!(
            (p.host_port, p.container_port, p.protocol.as_str()),
            (8080, 80, "tcp")
        );
        let p = parse_port("127.0.0.1:53:5353/udp").unwrap();
        assert_eq!(
            (
                p.host_ip.as_str(),
                p.host_port,
                p.container_port,
                p.protocol.as_str()
            ),
            ("127.0.0.1", 53, 5353, "udp")
        );
        let p = parse_port("80").unwrap();
        assert_eq!((p.host_port, p.container_port), (80, 80));
        for bad in ["0:80", "8080:70000", "a:b", "8080:80/sctp", "1.2.3:80:80"] {
            let e = parse_port(bad).unwrap_err().to_string();
            assert!(e.contains("invalid -p"), "{bad}: {e}");
        }
    }

    #[test]
    fn env_and_labels() {
        assert_eq!(parse_env("A=1").unwrap(), Some("A=1".into()));
        assert_eq!(parse_env("SHOAL_SURELY_UNSET_VAR").unwrap(), None);
        assert!(parse_env("=x").is_err());
        assert_eq!(parse_label("k=v").unwrap(), ("k".into(), "v".into()));
        assert!(parse_label("").is_err());
    }

    #[test]
    fn since() {
        let now = 1_000_000_000_000_000_000;
        assert_eq!(parse_since("10m", now).unwrap(), now - 600_000_000_000);
        assert_eq!(
            parse_since("1700000000", now).unwrap(),
            1_700_000_000_000_000_000
        );
        assert_eq!(
            parse_since("2023-11-14T22:13:20Z", now).unwrap(),
            1_700_000_000_000_000_000
        );
        assert!(parse_since("yesterday", now).is_err());
    }
}
