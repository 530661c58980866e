//! Human output: tables, ages, durations, sizes.

/// Prints rows as a table with columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
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
            if i + 1 == n {
                s.push_str(&c);
            } else {
                let pad = widths[i] + 3 - c.chars().count();
                s.push_str(&c);
                s.push_str(&" ".repeat(pad));
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

/// "5 seconds", "3 minutes", "2 hours", "4 days".
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    let (n, unit) = match secs {
        0 => return "Less than a second".into(),
        1..=59 => (secs, "second"),
        60..=3599 => (secs / 60, "minute"),
        3600..=86399 => (secs / 3600, "hour"),
        _ => (secs / 86400, "day"),
    };
    if n == 1 {
        format!("{} {unit}", if unit == "hour" { "An" } else { "1" })
    } else {
        format!("{n} {unit}s")
    }
}

/// "5 seconds ago".
pub fn ago(unix: i64, now: i64) -> String {
    if unix <= 0 {
        return String::new();
    }
    format!("{} ago", duration(now - unix))
}

/// 1.5MB, 12kB, as Docker prints sizes.
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
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_pad_columns() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A     BB\nxxx   y\n");
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(duration(5), "5 seconds");
        assert_eq!(duration(1), "1 second");
        assert_eq!(duration(120), "2 minutes");
        assert_eq!(duration(3600), "An hour");
        assert_eq!(duration(3 * 86400), "3 days");
        assert_eq!(ago(100, 105), "5 seconds ago");
        assert_eq!(size(2_129_920), "2.130MB");
        assert_eq!(size(999), "999B");
        assert_eq!(
            command(&["sh".into(), "-c".into(), "echo hello world".into()], 10),
            "\"sh -c ech…\""
        );
    }
}
