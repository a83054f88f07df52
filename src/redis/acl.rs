//! Per-queue ACL users: pure rule building, so the exact permissions are
//! unit-tested without a server and proven against one in the integration tests.

/// Commands every client needs to connect, whatever its role. `HELLO`
/// negotiates RESP3; clients name their connections with `CLIENT SETNAME`.
/// (`CLIENT SETINFO`, which redis-rs also sends, exists only from Redis 7.2
/// and naming it would break `ACL SETUSER` on 7.0; clients ignore its denial.)
const CONNECT: &[&str] = &["+ping", "+hello", "+auth", "+client|setname"];

/// The ACL user names of a Queue: `streamq.<namespace>.<name>.<role>`.
pub fn user_name(namespace: &str, name: &str, role: Role) -> String {
    format!("streamq.{namespace}.{name}.{}", role.as_str())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Producer,
    Consumer,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Producer => "producer",
            Self::Consumer => "consumer",
        }
    }
}

/// The `ACL SETUSER` arguments (after the user name) that give `role` exactly
/// its permissions on one queue. `reset` first, so a user edited by hand is
/// put back as it should be.
///
/// The consumer's extra keys use Redis 7 selectors `( … )`: a command must be
/// allowed with all its keys by one selector, so `XADD` is allowed on the
/// dead-letter stream only, never on the main stream, and the hash commands
/// only on the worker stats key.
pub fn setuser_rules(role: Role, password: &str, stream: &str, dead_letter: Option<&str>) -> Vec<String> {
    let mut rules: Vec<String> = ["reset", "on", "resetchannels", "-@all"].map(String::from).to_vec();
    rules.push(format!(">{password}"));
    rules.extend(CONNECT.iter().map(|c| (*c).to_owned()));
    match role {
        Role::Producer => {
            rules.push("+xadd".into());
            rules.push(format!("~{}", glob_escape(stream)));
        }
        Role::Consumer => {
            rules.extend(
                [
                    "+multi",
                    "+exec",
                    "+discard",
                    "+xreadgroup",
                    "+xack",
                    "+xautoclaim",
                    "+xclaim",
                    "+xpending",
                    "+xinfo",
                    "+xgroup|createconsumer",
                    "+xgroup|delconsumer",
                ]
                .map(String::from),
            );
            rules.push(format!("~{}", glob_escape(stream)));
            if let Some(dlq) = dead_letter {
                rules.push(format!("(+xadd ~{})", glob_escape(dlq)));
            }
            // Every group's stats hash: keys::stats_key(stream, <any group>).
            let stats_pattern = format!("{}*", glob_escape(&super::keys::stats_key(stream, "")));
            rules.push(format!("(+hincrby +hset +hgetall ~{stats_pattern})"));
        }
    }
    rules
}

/// Escapes the glob characters of a key, so `~pattern` matches exactly that key.
fn glob_escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_may_only_xadd_on_its_stream() {
        let rules = setuser_rules(Role::Producer, "pw", "streamq:{ns.q}", Some("streamq:{ns.q}:dlq"));
        assert!(rules.contains(&"+xadd".to_owned()));
        assert!(rules.contains(&"~streamq:{ns.q}".to_owned()));
        assert!(!rules.iter().any(|r| r.contains("dlq")), "{rules:?}");
        assert!(
            !rules
                .iter()
                .any(|r| r.contains("@stream") || r.contains("@dangerous") || r == "+@all")
        );
        assert_eq!(&rules[..4], ["reset", "on", "resetchannels", "-@all"]);
    }

    #[test]
    fn consumer_xadds_only_through_the_dead_letter_selector() {
        let rules = setuser_rules(Role::Consumer, "pw", "s", Some("s:dlq"));
        assert!(
            !rules.contains(&"+xadd".to_owned()),
            "root permissions must not include XADD"
        );
        assert!(rules.contains(&"(+xadd ~s:dlq)".to_owned()));
        assert!(rules.contains(&"(+hincrby +hset +hgetall ~s:stats:*)".to_owned()));
        let without_dlq = setuser_rules(Role::Consumer, "pw", "s", None);
        assert!(!without_dlq.iter().any(|r| r.contains("xadd")));
    }

    #[test]
    fn glob_characters_in_keys_are_literal() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        let rules = setuser_rules(Role::Producer, "pw", "q*", None);
        assert!(rules.contains(&"~q\\*".to_owned()));
    }

    #[test]
    fn user_names_carry_namespace_queue_and_role() {
        assert_eq!(
            user_name("prod", "orders", Role::Consumer),
            "streamq.prod.orders.consumer"
        );
    }
}
