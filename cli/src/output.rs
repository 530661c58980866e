//! Human output: tables, ages, durations, sizes, and the cells of `ps`.

use shoal_api::engine as pb;

/// Lays rows out as a table, each column padded to its widest cell plus three spaces.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            s.push_str(&c);
            if i + 1 < n {
                let width = widths.get(i).copied().unwrap_or(0);
                s.push_str(&" ".repeat(width + 3 - c.chars().count().min(width)));
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.clone()));
        out.push('\n');
    }
    out
}

/// A span of time as people say it: "5 seconds", "About a minute", "3 hours", "2 weeks".
pub fn duration(secs: i64) -> String {
    const MINUTE: i64 = 60;
    const HOUR: i64 = 60 * MINUTE;
    const DAY: i64 = 24 * HOUR;
    match secs.max(0) {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < MINUTE => format!("{s} seconds"),
        s if s < 2 * MINUTE => "About a minute".into(),
        s if s < HOUR => format!("{} minutes", s / MINUTE),
        s if s < 2 * HOUR => "About an hour".into(),
        s if s < 2 * DAY => format!("{} hours", s / HOUR),
        s if s < 14 * DAY => format!("{} days", s / DAY),
        s if s < 90 * DAY => format!("{} weeks", s / (7 * DAY)),
        s if s < 730 * DAY => format!("{} months", s / (30 * DAY)),
        s => format!("{} years", s / (365 * DAY)),
    }
}

/// "5 seconds ago"; empty for a time that never was (0).
pub fn ago(unix: i64, now: i64) -> String {
    if unix <= 0 {
        return String::new();
    }
    format!("{} ago", duration(now - unix))
}

/// A size as Docker prints it, in powers of ten: 1.5MB, 12kB.
pub fn size(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.3}GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.3}MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1}kB", b / 1e3)
    } else {
        format!("{bytes}B")
    }
}

/// The current Unix time in seconds.
pub fn now() -> i64 {
    shoal_api::clock::now_secs() as i64
}

/// A command line shown in a table: quoted and cut to `max` characters.
pub fn command(args: &[String], max: usize) -> String {
    let joined = args.join(" ");
    let cut = if joined.chars().count() > max {
        let mut s: String = joined.chars().take(max.saturating_sub(1)).collect();
        s.push('…');
        s
    } else {
        joined
    };
    format!("\"{cut}\"")
}

/// An id as tables show it: without `sha256:`, 12 characters.
pub fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// The STATUS cell of `ps`: "Up 3 seconds", "Exited (0) 2 minutes ago", "Created".
pub fn container_status(c: &pb::ContainerSummary, now: i64) -> String {
    match pb::ContainerStatus::try_from(c.status) {
        Ok(pb::ContainerStatus::Running) => format!("Up {}", duration(now - c.started_unix)),
        Ok(pb::ContainerStatus::Exited) => {
            format!("Exited ({}) {}", c.exit_code, ago(c.finished_unix, now))
                .trim_end()
                .to_string()
        }
        Ok(pb::ContainerStatus::Removing) => "Removal In Progress".into(),
        _ => "Created".into(),
    }
}

/// The PORTS cell of `ps`: "0.0.0.0:8080->80/tcp, 127.0.0.1:53->53/udp".
pub fn ports(ports: &[pb::PortMapping]) -> String {
    ports
        .iter()
        .map(|p| {
            let ip = match p.host_ip.as_str() {
                "" => "0.0.0.0".to_string(),
                ip if ip.contains(':') => format!("[{ip}]"),
                ip => ip.to_string(),
            };
            let protocol = if p.protocol.is_empty() {
                "tcp"
            } else {
                &p.protocol
            };
            format!("{ip}:{}->{}/{protocol}", p.host_port, p.container_port)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns() {
        for (headers, rows, want) in [
            (
                vec!["A", "BB"],
                vec![vec!["xxx".to_string(), "y".to_string()]],
                "A     BB\nxxx   y\n",
            ),
            (vec!["ID", "NAME"], vec![], "ID   NAME\n"),
            (
                vec!["ID", "CMD", "NAME"],
                vec![
                    vec!["1".into(), "\"sé\"".into(), "a".into()],
                    vec!["22".into(), "".into(), "".into()],
                ],
                "ID   CMD    NAME\n1    \"sé\"   a\n22\n",
            ),
        ] {
            assert_eq!(table(&headers, &rows), want);
        }
    }

    #[test]
    fn durations() {
        for (secs, want) in [
            (-3, "Less than a second"),
            (0, "Less than a second"),
            (1, "1 second"),
            (5, "5 seconds"),
            (59, "59 seconds"),
            (60, "About a minute"),
            (119, "About a minute"),
            (120, "2 minutes"),
            (3599, "59 minutes"),
            (3600, "About an hour"),
            (3 * 3600, "3 hours"),
            (47 * 3600, "47 hours"),
            (3 * 86400, "3 days"),
            (15 * 86400, "2 weeks"),
            (100 * 86400, "3 months"),
            (800 * 86400, "2 years"),
        ] {
            assert_eq!(duration(secs), want, "{secs}");
        }
        assert_eq!(ago(100, 105), "5 seconds ago");
        assert_eq!(ago(0, 105), "");
    }

    #[test]
    fn sizes() {
        for (bytes, want) in [
            (0, "0B"),
            (999, "999B"),
            (1000, "1.0kB"),
            (12_345, "12.3kB"),
            (2_129_920, "2.130MB"),
            (1_500_000_000, "1.500GB"),
        ] {
            assert_eq!(size(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn commands_and_ids() {
        let argv = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        for (args, max, want) in [
            (argv("sh -c echo"), 20, "\"sh -c echo\""),
            (argv("sh -c echo hello world"), 10, "\"sh -c ech…\""),
            (argv("0123456789"), 10, "\"0123456789\""),
            (vec![], 10, "\"\""),
        ] {
            assert_eq!(command(&args, max), want);
        }
        assert_eq!(short_id("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_id("abc"), "abc");
    }

    #[test]
    fn status_cells() {
        let now = 1_000_000;
        let c = |status: pb::ContainerStatus, exit_code, started, finished| pb::ContainerSummary {
            status: status as i32,
            exit_code,
            started_unix: started,
            finished_unix: finished,
            ..Default::default()
        };
        for (summary, want) in [
            (
                c(pb::ContainerStatus::Running, 0, now - 3, 0),
                "Up 3 seconds",
            ),
            (
                c(pb::ContainerStatus::Exited, 0, now - 200, now - 150),
                "Exited (0) 2 minutes ago",
            ),
            (
                c(pb::ContainerStatus::Exited, 137, now - 9, now - 1),
                "Exited (137) 1 second ago",
            ),
            (c(pb::ContainerStatus::Exited, 1, 0, 0), "Exited (1)"),
            (c(pb::ContainerStatus::Created, 0, 0, 0), "Created"),
            (
                c(pb::ContainerStatus::Removing, 0, 0, 0),
                "Removal In Progress",
            ),
        ] {
            assert_eq!(container_status(&summary, now), want);
        }
    }

    #[test]
    fn port_cells() {
        let p = |ip: &str, host, container, proto: &str| pb::PortMapping {
            host_ip: ip.into(),
            host_port: host,
            container_port: container,
            protocol: proto.into(),
        };
        for (mappings, want) in [
            (vec![], ""),
            (vec![p("", 8080, 80, "tcp")], "0.0.0.0:8080->80/tcp"),
            (vec![p("", 8080, 80, "")], "0.0.0.0:8080->80/tcp"),
            (
                vec![p("127.0.0.1", 53, 5353, "udp"), p("::1", 1, 2, "tcp")],
                "127.0.0.1:53->5353/udp, [::1]:1->2/tcp",
            ),
        ] {
            assert_eq!(ports(&mappings), want);
        }
    }
}
