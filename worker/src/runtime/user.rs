//! Turns `--user` (`name`, `uid`, `name:group`, `uid:gid`) into numeric ids by reading the
//! image's `/etc/passwd` and `/etc/group`, as Docker does.

use std::path::Path;

use super::RuntimeError;
use super::fsutil::secure_join;

/// The numeric identity a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// The user id.
    pub uid: u32,
    /// The primary group id.
    pub gid: u32,
    /// Supplementary groups from `/etc/group`.
    pub additional_gids: Vec<u32>,
    /// The home directory, when the user is in `/etc/passwd`.
    pub home: Option<String>,
}

/// Resolves `spec` against the files of the root filesystem at `rootfs`.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<ResolvedUser, RuntimeError> {
    let passwd =
        std::fs::read_to_string(secure_join(rootfs, Path::new("/etc/passwd"))).unwrap_or_default();
    let group =
        std::fs::read_to_string(secure_join(rootfs, Path::new("/etc/group"))).unwrap_or_default();
    resolve_in(&passwd, &group, spec)
}

/// Resolves `spec` against the contents of `/etc/passwd` and `/etc/group`.
pub fn resolve_in(passwd: &str, group: &str, spec: &str) -> Result<ResolvedUser, RuntimeError> {
    let spec = spec.trim();
    let (user_part, group_part) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .find(|f| f[0] == user_part || (user_part.parse::<u32>().is_ok() && f[2] == user_part));
    let (uid, mut gid, home, name) = match (&entry, user_part.parse::<u32>()) {
        (Some(f), _) => (
            parse_id(f[2], "uid")?,
            parse_id(f[3], "gid")?,
            Some(f[5].to_string()),
            Some(f[0].to_string()),
        ),
        (None, Ok(uid)) => (uid, uid, None, None),
        (None, Err(_)) => {
            return Err(RuntimeError::User(format!(
                "unable to find user {user_part}: no matching entries in the image's /etc/passwd; use a numeric uid (for example --user 1000:1000) or add the user to the image"
            )));
        }
    };
    if entry.is_none() {
        gid = 0;
    }
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group
                .lines()
                .map(|l| l.split(':').collect::<Vec<_>>())
                .find(|f| f.len() >= 3 && f[0] == g)
                .map(|f| parse_id(f[2], "gid"))
                .transpose()?
                .ok_or_else(|| {
                    RuntimeError::User(format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group; use a numeric gid"
                    ))
                })?,
        };
    }
    let mut additional_gids = Vec::new();
    if let Some(name) = name {
        for f in group.lines().map(|l| l.split(':').collect::<Vec<_>>()) {
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(id) = f[2].parse::<u32>()
                && id != gid
                && !additional_gids.contains(&id)
            {
                additional_gids.push(id);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

fn parse_id(s: &str, what: &str) -> Result<u32, RuntimeError> {
    s.parse()
        .map_err(|_| RuntimeError::User(format!("malformed {what} \"{s}\" in the image's files")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nwheel:x:10:app,root\n";

    #[test]
    fn resolves_names_ids_and_groups() {
        let r = resolve_in(PASSWD, GROUP, "").unwrap();
        assert_eq!((r.uid, r.gid), (0, 0));
        let r = resolve_in(PASSWD, GROUP, "app").unwrap();
        assert_eq!(
            (r.uid, r.gid, r.additional_gids.clone()),
            (1000, 1000, vec![10])
        );
        assert_eq!(r.home.as_deref(), Some("/home/app"));
        let r = resolve_in(PASSWD, GROUP, "nobody:nogroup").unwrap();
        assert_eq!((r.uid, r.gid), (65534, 65534));
        let r = resolve_in(PASSWD, GROUP, "4242:77").unwrap();
        assert_eq!((r.uid, r.gid), (4242, 77));
        let r = resolve_in("", "", "4242").unwrap();
        assert_eq!((r.uid, r.gid), (4242, 0));
        let r = resolve_in(PASSWD, GROUP, "1000").unwrap();
        assert_eq!((r.uid, r.gid), (1000, 1000));
    }

    #[test]
    fn unknown_names_say_how_to_fix() {
        let e = resolve_in(PASSWD, GROUP, "ghost").unwrap_err().to_string();
        assert!(e.contains("unable to find user ghost"), "{e}");
        assert!(e.contains("numeric uid"), "{e}");
        let e = resolve_in(PASSWD, GROUP, "app:ghosts")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unable to find group ghosts"), "{e}");
    }
}
