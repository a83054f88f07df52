//! The apiserver's audit log (Metadata level, ServiceAccounts only, kept by
//! tests/cluster/up): who did what, as RBAC sees a request.

use std::io::BufRead;

use k8s_openapi::jiff::Timestamp;
use serde_json::Value;

use super::env::cluster_dir;

/// One kind of API request: what RBAC authorizes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Access {
    pub verb: String,
    /// "" for the core group.
    pub group: String,
    pub resource: String,
    pub subresource: String,
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.group.is_empty() { "core" } else { &self.group };
        write!(f, "{:<7} {group:<20} {}", self.verb, self.resource)?;
        if !self.subresource.is_empty() {
            write!(f, "/{}", self.subresource)?;
        }
        Ok(())
    }
}

/// One completed request from the audit log.
#[derive(Clone, Debug)]
pub struct Audited {
    pub access: Access,
    pub user: String,
    pub namespace: String,
    pub name: String,
    pub code: u16,
    /// When the apiserver received it, and when it completed.
    pub received: Timestamp,
    pub completed: Timestamp,
}

impl Audited {
    pub fn mutating(&self) -> bool {
        matches!(
            self.access.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }

    pub fn succeeded(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Every completed request of users whose name starts with `user_prefix`,
/// received at or after `since`, from the apiserver's audit log (Metadata
/// level, ServiceAccounts only) and its rotated backup. The log is shared by
/// all tests, so the filter is by user and time.
pub fn audit_log(user_prefix: &str, since: Timestamp) -> Vec<Audited> {
    let dir = cluster_dir().join("logs");
    let mut found = vec![];
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let file_name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !(file_name.starts_with("audit") && file_name.ends_with(".log")) {
            continue;
        }
        files += 1;
        let needle = format!("\"username\":\"{user_prefix}");
        for line in std::io::BufReader::new(std::fs::File::open(&path).unwrap()).lines() {
            let Ok(line) = line else { continue };
            if !line.contains(&needle) {
                continue;
            }
            let event: Value = serde_json::from_str(&line).unwrap();
            if event["stage"] != "ResponseComplete" {
                continue;
            }
            let received: Timestamp = event["requestReceivedTimestamp"].as_str().unwrap().parse().unwrap();
            if received < since {
                continue;
            }
            let object = &event["objectRef"];
            let text = |v: &Value| v.as_str().unwrap_or_default().to_owned();
            found.push(Audited {
                access: Access {
                    verb: text(&event["verb"]),
                    group: text(&object["apiGroup"]),
                    resource: text(&object["resource"]),
                    subresource: text(&object["subresource"]),
                },
                user: text(&event["user"]["username"]),
                namespace: text(&object["namespace"]),
                name: text(&object["name"]),
                code: event["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
                received,
                completed: event["stageTimestamp"].as_str().unwrap().parse().unwrap(),
            });
        }
    }
    assert!(files > 0, "no audit log in {}", dir.display());
    found.sort_by_key(|a| a.completed);
    found
}
