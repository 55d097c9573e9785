//! Reports get shared: a command line can carry credentials (`--api-key=...`, `postgres://u:pw@host`).
//! Values that look like secrets are replaced before anything is written.

const SECRET_WORDS: &[&str] =
    &["key", "token", "secret", "password", "passwd", "pwd", "auth", "credential", "cookie", "session", "bearer"];
pub const REDACTED: &str = "<redacted>";

fn names_a_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|word| name.contains(word))
}

pub fn redact_cmdline(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut next_is_secret = false;
    for arg in args {
        if std::mem::take(&mut next_is_secret) && !arg.starts_with('-') {
            out.push(REDACTED.to_string());
            continue;
        }
        if let Some((name, _)) = arg.split_once('=').filter(|(name, _)| names_a_secret(name)) {
            out.push(format!("{name}={REDACTED}"));
        } else if arg.starts_with('-') && names_a_secret(arg) {
            next_is_secret = true;
            out.push(arg.clone());
        } else {
            out.push(redact_url_password(arg));
        }
    }
    out
}

/// `scheme://user:password@host` -> `scheme://user:<redacted>@host`.
fn redact_url_password(arg: &str) -> String {
    let Some(scheme_end) = arg.find("://") else { return arg.to_string() };
    let authority_start = scheme_end + 3;
    let authority_end = arg[authority_start..].find('/').map_or(arg.len(), |i| authority_start + i);
    let authority = &arg[authority_start..authority_end];
    let Some(at) = authority.rfind('@') else { return arg.to_string() };
    let Some(colon) = authority[..at].find(':') else { return arg.to_string() };
    format!("{}{}{}", &arg[..authority_start + colon + 1], REDACTED, &arg[authority_start + at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn redact(args: &[&str]) -> Vec<String> {
        redact_cmdline(&args.iter().map(|a| a.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_naming_secrets_lose_their_values() {
        assert_eq!(
            redact(&["srv", "--api-key=sk-123", "--token", "abc", "--port", "80", "PASSWORD=x"]),
            vec!["srv", "--api-key=<redacted>", "--token", "<redacted>", "--port", "80", "PASSWORD=<redacted>"]
        );
    }

    #[test]
    fn passwords_in_urls_are_hidden() {
        assert_eq!(
            redact(&["--db", "postgres://app:hunter2@db:5432/x", "http://host/a:b@c"]),
            vec!["--db", "postgres://app:<redacted>@db:5432/x", "http://host/a:b@c"]
        );
    }

    #[test]
    fn ordinary_arguments_stay() {
        assert_eq!(redact(&["bun", "run", "server.ts", "--port=3000"]), vec!["bun", "run", "server.ts", "--port=3000"]);
    }
}
