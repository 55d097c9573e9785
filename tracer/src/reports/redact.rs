//! Reports get shared: a command line can carry credentials (`--api-key=...`, `postgres://u:pw@host`,
//! `-H "Authorization: Bearer ..."`). Values that look like secrets are replaced before anything is written.
//! When in doubt a value is redacted: a report missing a word is better than one leaking a password.

use std::sync::LazyLock;

use regex::{Captures, Regex};

pub const REDACTED: &str = "<redacted>";

/// Words that make a name (of an option, a header, a variable) name a secret, wherever they appear in it
/// (`clientSecret`, `X-Auth-Token`, `DB_PASSWORD_1`).
const SECRET_PARTS: &[&str] =
    &["password", "passwd", "passphrase", "secret", "token", "credential", "cookie", "apikey", "authorization"];

/// Words that name a secret only as a whole word of the name: as parts they are too common (`keyboard`,
/// `author`, `passive`).
const SECRET_WORDS: &[&str] = &[
    "pass",
    "pw",
    "pwd",
    "passcode",
    "passin",
    "passout",
    "storepass",
    "keypass",
    "key",
    "keys",
    "auth",
    "authn",
    "creds",
    "session",
    "sessionid",
    "sid",
    "private",
    "privkey",
    "signature",
    "sig",
    "bearer",
    "jwt",
    "otp",
    "accesskey",
    "secretkey",
    "privatekey",
    "sas",
    "dsn",
];

/// A last word that makes the value something about a secret rather than the secret: `--token-ttl 60`,
/// `--password-file /run/x`, `--key-type rsa`, `--password-stdin`.
const HARMLESS_LAST_WORDS: &[&str] = &[
    "ttl",
    "timeout",
    "expiry",
    "expires",
    "length",
    "len",
    "size",
    "count",
    "max",
    "min",
    "limit",
    "interval",
    "file",
    "path",
    "dir",
    "type",
    "algorithm",
    "algo",
    "format",
    "mode",
    "stdin",
    "prompt",
    "enabled",
    "disabled",
    "required",
    "policy",
];

/// Programs whose short option takes a password, where elsewhere the same letter means something harmless
/// (`psql -p 5432`, `ssh -p 22`, `redis-cli -p 6379`, `docker -p 80:80`). `attached_only`: the program reads
/// the password only joined to the option (`mysql -pSECRET`; `mysql -p db` prompts, and `db` is a database).
const PASSWORD_OPTIONS: &[(&[&str], &str, bool)] = &[
    (
        &[
            "mysql",
            "mysqldump",
            "mysqladmin",
            "mysqlimport",
            "mysqlcheck",
            "mysqlshow",
            "mysqlslap",
            "mysqlpump",
            "mariadb",
            "mariadb-dump",
            "mariadb-admin",
            "mariadb-import",
            "mariadb-check",
        ],
        "-p",
        true,
    ),
    (&["sshpass"], "-p", false),
    (&["redis-cli", "valkey-cli", "keydb-cli"], "-a", false),
    (
        &["mongo", "mongosh", "mongodump", "mongorestore", "mongoexport", "mongoimport", "mongostat", "mongotop"],
        "-p",
        false,
    ),
    (&["zip", "zipcloak"], "-P", false),
    (&["7z", "7za", "7zz", "7zr", "unrar", "rar"], "-p", true),
    (&["rabbitmqadmin"], "-p", false),
];

/// Options whose value is `user:password` in curl and tools like it (`-u admin:hunter2`).
const USER_PASSWORD_OPTIONS: &[&str] = &["-u", "--user", "-U", "--proxy-user"];

/// Splits a name into lowercase words: at anything not a letter or digit, and where camelCase turns.
fn words_of(name: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if !c.is_alphanumeric() {
            words.extend((!word.is_empty()).then(|| std::mem::take(&mut word)));
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower {
            words.push(std::mem::take(&mut word));
        }
        previous_lower = c.is_lowercase() || c.is_ascii_digit();
        word.extend(c.to_lowercase());
    }
    words.extend((!word.is_empty()).then_some(word));
    words
}

/// Whether an option, header or variable name names a secret: `--api-key`, `X-Auth-Token`, `PGPASSWORD`.
pub fn names_a_secret(name: &str) -> bool {
    let words = words_of(name);
    let Some(last) = words.last() else { return false };
    if HARMLESS_LAST_WORDS.contains(&last.as_str()) || words.first().is_some_and(|first| first == "no") {
        return false;
    }
    is_secret_word(&words.concat()) || words.iter().any(|word| is_secret_word(word))
}

fn is_secret_word(word: &str) -> bool {
    SECRET_WORDS.contains(&word) || SECRET_PARTS.iter().any(|part| word.contains(part))
}

/// A bare word that is a secret's name, its value the next argument: `aws configure set
/// aws_secret_access_key VALUE`. Only an identifier whose last word names the secret (`auth-server` or
/// `session.ts` name no secret).
fn is_secret_setting_name(arg: &str) -> bool {
    arg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && words_of(arg).last().is_some_and(|last| is_secret_word(last))
}

/// Whether a word can be the base64 credentials of a `Basic` authorization.
fn looks_like_base64(word: &str) -> bool {
    word.len() >= 8 && word.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='))
}

/// `Name:` where Name may name a secret: an HTTP header (`Authorization: Basic ...`, `X-Api-Key:...`),
/// anywhere in an argument (`-HCookie: a=b`, a shell command line).
static HEADER_NAME: LazyLock<Regex> = LazyLock::new(|| {
    // cannot fail: a constant pattern, checked by the tests
    Regex::new(r"([A-Za-z][A-Za-z0-9_-]*)[ \t]*:").expect("valid pattern")
});

/// Redacts the value of every header (or `name: value`) whose name names a secret: to the end of the
/// argument, or to the closing quote in a shell line. `scheme://` is no header.
fn redact_headers(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for found in HEADER_NAME.captures_iter(text) {
        let (Some(whole), Some(name)) = (found.get(0), found.get(1)) else { continue };
        let rest = &text[whole.end()..];
        if whole.start() < copied || rest.starts_with("//") || !names_a_secret(name.as_str()) {
            continue;
        }
        let value_len = rest.find(['\'', '"', '\n']).unwrap_or(rest.len());
        let value = &rest[..value_len];
        if value.trim().is_empty() || value.trim_start().starts_with(REDACTED) {
            continue;
        }
        out.push_str(&text[copied..whole.end()]);
        out.push_str(&value[..value.len() - value.trim_start().len()]);
        out.push_str(REDACTED);
        copied = whole.end() + value_len;
    }
    out.push_str(&text[copied..]);
    out
}

/// An authorization scheme and its credentials anywhere: `Bearer eyJ...`, `Basic dXNlcjpwdw==`.
static SCHEME_TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    // cannot fail: a constant pattern, checked by the tests
    Regex::new(r"\b((?i-u:bearer|basic|digest|token|apikey|negotiate))(\s+)([A-Za-z0-9._~+/=:-]{6,})")
        .expect("valid pattern")
});

/// A password in a URL: `scheme://user:password@host`.
static URL_PASSWORD: LazyLock<Regex> = LazyLock::new(|| {
    // cannot fail: a constant pattern, checked by the tests
    Regex::new(r"([A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)([^\s@/]*)(@)").expect("valid pattern")
});

/// `name=value` inside a longer argument: a URL's query (`?token=abc&x=1`), a shell line (`PGPASSWORD=x psql`),
/// a connection string (`Password=x;Server=y`), or `--secret=value` in a command given as one string.
static NAMED_VALUE: LazyLock<Regex> = LazyLock::new(|| {
    // cannot fail: a constant pattern, checked by the tests
    Regex::new(r"([A-Za-z0-9_.-]+)(=)([^&;,\s'\x22]*)").expect("valid pattern")
});

/// `--secret value` inside a longer argument (a command line given to `sh -c`).
static NAMED_OPTION: LazyLock<Regex> = LazyLock::new(|| {
    // cannot fail: a constant pattern, checked by the tests
    Regex::new(r#"(\s--?[A-Za-z0-9_.-]+)(\s+)([^\s'"-][^\s'"]*)"#).expect("valid pattern")
});

/// Tokens that are credentials by their shape wherever they stand: a JWT, and the key formats of GitHub,
/// GitLab, Slack, Stripe, OpenAI-style APIs and AWS access keys.
static KNOWN_TOKEN: LazyLock<Regex> = LazyLock::new(|| {
    // cannot fail: a constant pattern, checked by the tests
    Regex::new(
        r"\beyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*|\b(?:ghp|gho|ghu|ghs|ghr|github_pat|glpat|xox[abprs]|sk|rk|pk)[_-][A-Za-z0-9_-]{10,}|\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    )
    .expect("valid pattern")
});

/// Redacts the secrets in one argument's text wherever they stand in it.
fn redact_within(arg: &str) -> String {
    let text = URL_PASSWORD.replace_all(arg, |c: &Captures| format!("{}{REDACTED}{}", &c[1], &c[3]));
    let text = redact_headers(&text);
    let text = NAMED_VALUE.replace_all(&text, |c: &Captures| {
        if names_a_secret(&c[1]) && &c[3] != REDACTED { format!("{}={REDACTED}", &c[1]) } else { c[0].to_string() }
    });
    let text = NAMED_OPTION.replace_all(&text, |c: &Captures| {
        if names_a_secret(&c[1]) { format!("{}{}{REDACTED}", &c[1], &c[2]) } else { c[0].to_string() }
    });
    let text = SCHEME_TOKEN.replace_all(&text, |c: &Captures| {
        if c[3].starts_with(REDACTED) { c[0].to_string() } else { format!("{}{}{REDACTED}", &c[1], &c[2]) }
    });
    KNOWN_TOKEN.replace_all(&text, REDACTED).into_owned()
}

/// The program a word runs, if it is one of [`PASSWORD_OPTIONS`]' (by file name: `/usr/bin/mysql`).
fn password_option_of(word: &str) -> Option<(&'static str, bool)> {
    let name = word.rsplit('/').next().unwrap_or(word);
    PASSWORD_OPTIONS
        .iter()
        .find(|(programs, _, _)| programs.contains(&name))
        .map(|(_, option, attached_only)| (*option, *attached_only))
}

/// Whether a value after `-p` in a program not known to take a password there looks like what `-p` most
/// often means: a port (`8080`, `80:80`, `127.0.0.1:80:80/tcp`, `8000-8010`) or a path (a pid file).
fn looks_like_port_or_path(value: &str) -> bool {
    value.contains('/') && !value.contains(':')
        || value.starts_with('.')
        || value.chars().all(|c| c.is_ascii_digit() || matches!(c, ':' | '-' | '.' | '/'))
        || value.ends_with("/tcp")
        || value.ends_with("/udp")
}

/// What comes next after an argument: its own value redacted, or kept, or only its password part.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Next {
    Keep,
    Secret,
    /// `user:password`: keep the user.
    UserPassword,
    /// `-p VALUE` of a program not known to take a password there: a port or a path stays.
    SecretUnlessPort,
}

pub fn redact_cmdline(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut next = Next::Keep;
    // The program the arguments are for: argv[0], or a later one run through a wrapper (`env`, `sudo`,
    // `docker exec db mysql ...`).
    let mut password_option = None;
    for (index, arg) in args.iter().enumerate() {
        match std::mem::replace(&mut next, Next::Keep) {
            Next::Secret if !arg.starts_with("--") => {
                out.push(REDACTED.to_string());
                continue;
            }
            Next::UserPassword => {
                out.push(match arg.split_once(':') {
                    Some((user, _)) if !arg.contains("://") => format!("{user}:{REDACTED}"),
                    _ => redact_within(arg),
                });
                continue;
            }
            Next::SecretUnlessPort if !arg.starts_with('-') && !looks_like_port_or_path(arg) => {
                out.push(REDACTED.to_string());
                continue;
            }
            _ => {}
        }
        if let Some(found) = password_option_of(arg).filter(|_| !arg.starts_with('-')) {
            password_option = Some(found);
            out.push(redact_within(arg));
            continue;
        }
        // `--name=value`, `NAME=value`, `-Dname=value`.
        if let Some((name, _)) = arg.split_once('=').filter(|(name, _)| names_a_secret(name) && !name.contains(' ')) {
            out.push(format!("{name}={REDACTED}"));
            continue;
        }
        if arg.starts_with('-') && !arg.contains(' ') {
            let attached = password_option
                .and_then(|(option, attached_only)| arg.strip_prefix(option).map(|rest| (option, attached_only, rest)));
            match attached {
                // `mysql -pSECRET`, `7z x -pSECRET`.
                Some((option, _, rest)) if !rest.is_empty() => {
                    out.push(format!("{option}{REDACTED}"));
                    continue;
                }
                // `sshpass -p SECRET`, `redis-cli -a SECRET`.
                Some((_, false, _)) => next = Next::Secret,
                Some((_, true, _)) => {}
                None if names_a_secret(arg) => next = Next::Secret,
                None if USER_PASSWORD_OPTIONS.contains(&arg.as_str()) => next = Next::UserPassword,
                None if arg == "-p" => next = Next::SecretUnlessPort,
                None => {}
            }
            out.push(redact_within(arg));
            continue;
        }
        // A bare scheme, its credentials the next argument (`Bearer TOKEN` split by a shell), or a setting's
        // name before its value.
        let basic_credentials = || args.get(index + 1).is_some_and(|next| looks_like_base64(next));
        if arg.eq_ignore_ascii_case("bearer")
            || arg.eq_ignore_ascii_case("basic") && basic_credentials()
            || is_secret_setting_name(arg)
        {
            next = Next::Secret;
        }
        out.push(redact_within(arg));
    }
    out
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

    /// Real-world spellings: each command line, and the one word of it that must not be in the report.
    const SECRETS: &[(&[&str], &str)] = &[
        // curl
        (&["curl", "--header", "Authorization: Bearer abc.def.ghi", "https://api"], "abc.def.ghi"),
        (&["curl", "-H", "X-Api-Key: k3y-v4lue", "https://api"], "k3y-v4lue"),
        (&["curl", "-H", "x-api-key:k3y-v4lue", "https://api"], "k3y-v4lue"),
        (&["curl", "-HAuthorization: Basic dXNlcjpodW50ZXIy", "https://api"], "dXNlcjpodW50ZXIy"),
        (&["curl", "-H", "Cookie: session=s3ss10n; theme=dark", "https://x"], "s3ss10n"),
        (&["curl", "-H", "Proxy-Authorization: Digest username=u, response=r3sp0nse", "u"], "r3sp0nse"),
        (&["curl", "-H", "PRIVATE-TOKEN: glpat-abcdefghijklmnop", "https://gitlab"], "glpat-abcdefghijklmnop"),
        (&["curl", "-u", "admin:hunter2", "https://x"], "hunter2"),
        (&["curl", "--user", "admin:hunter2", "https://x"], "hunter2"),
        (&["curl", "https://api.example.com/v1?api_key=s3cr3tkey&page=2"], "s3cr3tkey"),
        (&["curl", "https://x/y?access_token=t0k3n"], "t0k3n"),
        // an option naming a secret
        (&["server", "--pass", "hunter2"], "hunter2"),
        (&["server", "--password", "hunter2"], "hunter2"),
        (&["server", "--password=hunter2"], "hunter2"),
        (&["server", "--client-secret", "cl13nt"], "cl13nt"),
        (&["server", "-password", "hunter2"], "hunter2"),
        (&["server", "--auth", "hunter2"], "hunter2"),
        (&["server", "--auth-token=t0k3n"], "t0k3n"),
        (&["java", "-Djavax.net.ssl.keyStorePassword=st0r3", "-jar", "app.jar"], "st0r3"),
        (&["keytool", "-storepass", "st0r3", "-list"], "st0r3"),
        (&["openssl", "pkcs12", "-passin", "pass:hunter2"], "hunter2"),
        (&["app", "--apiKey", "k3y"], "k3y"),
        (&["app", "--private-key", "PRIV"], "PRIV"),
        // bearer and basic anywhere
        (&["app", "Bearer", "abc123xyz"], "abc123xyz"),
        (&["app", "Bearer abc123xyz"], "abc123xyz"),
        (&["app", "--note", "sent with token ghp_0123456789abcdefghij"], "ghp_0123456789abcdefghij"),
        // mysql-style and other programs' short options
        (&["mysql", "-u", "root", "-phunter2", "db"], "hunter2"),
        (&["/usr/bin/mysqldump", "-phunter2", "db"], "hunter2"),
        (&["env", "LANG=C", "mysql", "-phunter2"], "hunter2"),
        (&["sshpass", "-p", "hunter2", "ssh", "host"], "hunter2"),
        (&["redis-cli", "-h", "cache", "-a", "hunter2", "ping"], "hunter2"),
        (&["redis-cli", "-u", "redis://:hunter2@cache:6379"], "hunter2"),
        (&["mongosh", "--username", "u", "-p", "hunter2"], "hunter2"),
        (&["app", "-p", "hunter2"], "hunter2"),
        // URLs
        (&["psql", "postgresql://app:hunter2@db:5432/prod"], "hunter2"),
        (&["app", "--db", "mysql://root:hunter2@127.0.0.1/x"], "hunter2"),
        (&["app", "--db=postgres://app:hunter2@db/x"], "hunter2"),
        (&["app", "-Hx-auth-token: t0k3n"], "t0k3n"),
        (&["app", "DATABASE_URL=postgres://u:hunter2@db/x"], "hunter2"),
        (&["app", "amqp://guest:hunter2@rabbit:5672/"], "hunter2"),
        // aws, docker, env-style
        (&["aws", "configure", "set", "aws_secret_access_key", "wJalrXUtnFEMI"], "wJalrXUtnFEMI"),
        (&["app", "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI"], "wJalrXUtnFEMI"),
        (&["app", "--access-key", "AKIAIOSFODNN7EXAMPLE"], "AKIAIOSFODNN7EXAMPLE"),
        (&["docker", "login", "-u", "me", "-p", "hunter2", "registry"], "hunter2"),
        (&["docker", "login", "--password", "hunter2"], "hunter2"),
        (&["docker", "run", "-e", "POSTGRES_PASSWORD=hunter2", "postgres"], "hunter2"),
        (&["app", "GITHUB_TOKEN=ghp_x"], "ghp_x"),
        (&["app", "PGPASSWORD=hunter2"], "hunter2"),
        (&["app", "MYSQL_PWD=hunter2"], "hunter2"),
        (&["app", "SESSION_SECRET=s3cr3t"], "s3cr3t"),
        (&["app", "Server=db;User Id=sa;Password=hunter2;"], "hunter2"),
        // shell command lines
        (&["sh", "-c", "curl -H 'Authorization: Bearer t0k3nv4lue' https://x"], "t0k3nv4lue"),
        (&["sh", "-c", "PGPASSWORD=hunter2 psql -h db"], "hunter2"),
        (&["bash", "-c", "exec ./server --api-key k3yv4lue --port 80"], "k3yv4lue"),
        // well-known token shapes standing alone
        (&["app", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2lnbmF0dXJl"], "eyJhbGciOiJIUzI1NiJ9"),
        (&["app", "xoxb-123456789012-abcdefghij"], "xoxb-123456789012-abcdefghij"),
    ];

    #[test]
    fn secrets_in_real_world_spellings_are_redacted() {
        for (args, secret) in SECRETS {
            let redacted = redact(args);
            assert!(!redacted.join(" ").contains(secret), "{args:?} kept {secret:?}: {redacted:?}");
            assert!(redacted.join(" ").contains(REDACTED), "{args:?}: {redacted:?}");
        }
    }

    /// Command lines with nothing secret: every word stays.
    const HARMLESS: &[&[&str]] = &[
        &["psql", "-h", "db", "-p", "5432", "-U", "app", "prod"],
        &["ssh", "-p", "22", "host"],
        &["redis-cli", "-p", "6379", "ping"],
        &["docker", "run", "-p", "8080:80", "-p", "127.0.0.1:9000:9000/tcp", "nginx"],
        &["mysql", "-P", "3306", "-u", "root", "-p", "prod"],
        &["server", "--port", "8080", "--workers=4", "--log-level", "debug"],
        &["server", "--author", "Jane", "--keyboard", "us", "--passive"],
        &["server", "--session-timeout", "30", "--token-ttl", "60", "--password-file", "/run/secrets/db"],
        &["server", "--no-auth", "--listen", "0.0.0.0:80"],
        &["docker", "login", "--password-stdin", "-u", "me", "registry"],
        &["curl", "-H", "Content-Type: application/json", "-H", "Accept: */*", "http://host:8080/path"],
        &["node", "--max-old-space-size=4096", "server.js", "-p", "3000"],
        &["daemon", "-p", "/run/daemon.pid"],
        &["bun", "run", "basic.ts"],
        &["app", "at 12:30", "a:b"],
    ];

    #[test]
    fn harmless_arguments_stay_as_they_are() {
        for args in HARMLESS {
            assert_eq!(redact(args), *args, "{args:?}");
        }
    }

    #[test]
    fn names_are_read_by_their_words() {
        for name in ["--api-key", "X-Api-Key", "apiKey", "AWS_SECRET_ACCESS_KEY", "PGPASSWORD", "-storepass", "Cookie"]
        {
            assert!(names_a_secret(name), "{name}");
        }
        for name in ["--author", "--keyboard", "--passive", "--bypass", "--token-ttl", "--no-password", "Content-Type"]
        {
            assert!(!names_a_secret(name), "{name}");
        }
    }
}
