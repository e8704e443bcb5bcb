//! Authentication (static bearer tokens, client certificates, anonymous) and the
//! authorization hook that runs after it.
//!
//! The request path is: TLS (rustls verifies any client certificate) →
//! [`Authenticator::authenticate`] → [`Authorizer::authorize`] → handler. Until RBAC
//! lands, the authorizer is [`AllowAll`].

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// The user every unauthenticated request runs as, when anonymous access is allowed.
pub const ANONYMOUS_USER: &str = "system:anonymous";
/// The group of anonymous requests.
pub const UNAUTHENTICATED_GROUP: &str = "system:unauthenticated";
/// The group every authenticated user is in.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";
/// Paths served to anyone, without credentials (health checks).
pub const PUBLIC_PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];

/// Whether `path` is a health check served without authentication.
///
/// Sub-paths count too (`/readyz/etcd`), as in Kubernetes.
pub fn is_public_path(path: &str) -> bool {
    PUBLIC_PATHS.iter().any(|p| {
        path == *p
            || path
                .strip_prefix(p)
                .is_some_and(|rest| rest.starts_with('/'))
    })
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub uid: String,
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The anonymous user (`system:anonymous`, group `system:unauthenticated`).
    pub fn anonymous() -> Self {
        UserInfo {
            name: ANONYMOUS_USER.to_string(),
            uid: String::new(),
            groups: vec![UNAUTHENTICATED_GROUP.to_string()],
        }
    }

    /// An authenticated user: `groups` plus `system:authenticated`.
    fn authenticated(name: String, uid: String, mut groups: Vec<String>) -> Self {
        if !groups.iter().any(|g| g == AUTHENTICATED_GROUP) {
            groups.push(AUTHENTICATED_GROUP.to_string());
        }
        UserInfo { name, uid, groups }
    }
}

/// Why an authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read token file {path}")]
    ReadTokenFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("token file {path}, line {line}: {reason}")]
    TokenFileLine {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a request was not authenticated; each is answered with 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("invalid bearer token")]
    InvalidToken,
    #[error("invalid client certificate: {0}")]
    InvalidCertificate(String),
    #[error("no credentials")]
    Unauthenticated,
}

/// Authenticates requests from bearer tokens, client certificates or, if allowed, as
/// anonymous.
#[derive(Debug, Default)]
pub struct Authenticator {
    /// SHA-256 of each token → its user. Looking up a digest instead of the token does
    /// not leak, through timing, how much of a guessed token was right.
    tokens: HashMap<[u8; 32], UserInfo>,
    allow_anonymous: bool,
}

impl Authenticator {
    /// Builds an authenticator from an optional Kubernetes static token file.
    ///
    /// # Errors
    /// When the file cannot be read or a line is malformed (the error names the line).
    pub fn new(token_file: Option<&Path>, allow_anonymous: bool) -> Result<Self> {
        let tokens = match token_file {
            Some(path) => {
                let text = fs::read_to_string(path).map_err(|source| Error::ReadTokenFile {
                    path: path.to_path_buf(),
                    source,
                })?;
                parse_token_file(&text).map_err(|(line, reason)| Error::TokenFileLine {
                    path: path.to_path_buf(),
                    line,
                    reason,
                })?
            }
            None => HashMap::new(),
        };
        Ok(Authenticator {
            tokens,
            allow_anonymous,
        })
    }

    /// Authenticates a request from its `Authorization` header and the client
    /// certificate rustls verified (DER), in that order of preference.
    ///
    /// A bearer token that is present but unknown is refused even when anonymous
    /// access is allowed, as Kubernetes does.
    ///
    /// # Errors
    /// [`AuthError`] when the request carries bad credentials, or none and anonymous
    /// access is off.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
        peer_cert_der: Option<&[u8]>,
    ) -> Result<UserInfo, AuthError> {
        if let Some(token) = authorization.and_then(bearer_token) {
            let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
            return self
                .tokens
                .get(&digest)
                .cloned()
                .ok_or(AuthError::InvalidToken);
        }
        if let Some(der) = peer_cert_der {
            if let Some(user) = certificate_user(der)? {
                return Ok(user);
            }
        }
        if self.allow_anonymous {
            Ok(UserInfo::anonymous())
        } else {
            Err(AuthError::Unauthenticated)
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header; other schemes and empty
/// tokens give `None`.
fn bearer_token(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The user of a verified client certificate: CN is the name, each O a group.
/// A certificate without a CN names nobody (`None`), as in Kubernetes.
fn certificate_user(der: &[u8]) -> Result<Option<UserInfo>, AuthError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| AuthError::InvalidCertificate(e.to_string()))?;
    let subject = cert.subject();
    let name = match subject.iter_common_name().next() {
        Some(cn) => cn
            .as_str()
            .map_err(|e| AuthError::InvalidCertificate(format!("common name: {e}")))?,
        None => return Ok(None),
    };
    if name.is_empty() {
        return Ok(None);
    }
    let groups = subject
        .iter_organization()
        .map(|o| {
            o.as_str()
                .map(str::to_string)
                .map_err(|e| AuthError::InvalidCertificate(format!("organization: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(UserInfo::authenticated(
        name.to_string(),
        String::new(),
        groups,
    )))
}

/// Parses a static token file: CSV lines `token,user,uid[,"group1,group2"]`; blank
/// lines are skipped. Errors carry the 1-based line number and the reason.
fn parse_token_file(text: &str) -> Result<HashMap<[u8; 32], UserInfo>, (usize, String)> {
    let mut tokens = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.trim().is_empty() {
            continue;
        }
        let fields = split_csv_line(line).map_err(|reason| (number, reason))?;
        if fields.len() < 3 {
            return Err((
                number,
                format!(
                    "want at least 3 fields (token,user,uid), got {}",
                    fields.len()
                ),
            ));
        }
        if fields.len() > 4 {
            return Err((
                number,
                format!("want at most 4 fields, got {}", fields.len()),
            ));
        }
        let (token, user, uid) = (&fields[0], &fields[1], &fields[2]);
        if token.is_empty() {
            return Err((number, "empty token".to_string()));
        }
        if user.is_empty() {
            return Err((number, "empty user name".to_string()));
        }
        let groups = fields
            .get(3)
            .map(|g| {
                g.split(',')
                    .map(str::trim)
                    .filter(|g| !g.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let user = UserInfo::authenticated(user.clone(), uid.clone(), groups);
        if tokens.insert(digest, user).is_some() {
            return Err((number, "duplicate token".to_string()));
        }
    }
    Ok(tokens)
}

/// Splits one CSV line into fields; a field may be double-quoted, with `""` for a quote.
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    loop {
        let mut field = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            loop {
                match chars.next() {
                    Some('"') if chars.peek() == Some(&'"') => {
                        chars.next();
                        field.push('"');
                    }
                    Some('"') => break,
                    Some(c) => field.push(c),
                    None => return Err("unterminated quoted field".to_string()),
                }
            }
            match chars.next() {
                None => {
                    fields.push(field);
                    return Ok(fields);
                }
                Some(',') => fields.push(field),
                Some(c) => return Err(format!("unexpected {c:?} after quoted field")),
            }
        } else {
            loop {
                match chars.next() {
                    None => {
                        fields.push(field.trim().to_string());
                        return Ok(fields);
                    }
                    Some(',') => break,
                    Some('"') => return Err("quote inside an unquoted field".to_string()),
                    Some(c) => field.push(c),
                }
            }
            fields.push(field.trim().to_string());
        }
    }
}

/// What a request wants to do, as an authorizer sees it (Kubernetes' request
/// attributes). Empty strings mean "not applicable": a non-resource request such as
/// `/version` has an empty `resource` and only `verb` and `path` set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestAttributes {
    /// Kubernetes verb: get, list, watch, create, update, patch, delete, deletecollection
    /// for resources; the lowercase HTTP method for non-resource paths.
    pub verb: String,
    /// API group; empty for the core group.
    pub group: String,
    /// Resource plural, e.g. `pods`.
    pub resource: String,
    /// Subresource, e.g. `status`, `scale`, `binding`.
    pub subresource: String,
    /// Namespace; empty for cluster-scoped resources and all-namespace lists.
    pub namespace: String,
    /// Object name; empty for lists and creates.
    pub name: String,
    /// The request path.
    pub path: String,
}

impl RequestAttributes {
    /// Whether this request is about a resource (rather than a path like `/version`).
    pub fn is_resource_request(&self) -> bool {
        !self.resource.is_empty()
    }
}

/// An authorizer's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Refused, with a reason for the 403 Status message.
    Deny(String),
    /// No rule applies; the next authorizer decides (refused if none does).
    NoOpinion,
}

/// Decides whether an authenticated user may make a request. Runs after
/// [`Authenticator::authenticate`]; RBAC will be one.
pub trait Authorizer: Send + Sync {
    fn authorize(&self, user: &UserInfo, attrs: &RequestAttributes) -> Decision;
}

/// Allows every authenticated request. This is the authorizer until RBAC lands (a later
/// issue); authentication alone guards the apiserver meanwhile.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authorize(&self, _user: &UserInfo, _attrs: &RequestAttributes) -> Decision {
        Decision::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair};

    fn token_file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("create temp dir");
        let path = dir.path().join("tokens.csv");
        fs::write(&path, text).expect("write token file");
        (dir, path)
    }

    fn user(name: &str, uid: &str, groups: &[&str]) -> UserInfo {
        UserInfo {
            name: name.to_string(),
            uid: uid.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn parses_good_token_lines() {
        let (_dir, path) = token_file(
            "t1,admin,uid-1,\"system:masters,ops\"\n\
             \n\
             t2,system:kube-scheduler,uid-2\n\
             t3,bob,uid-3,devs\r\n",
        );
        let auth = Authenticator::new(Some(&path), false).expect("parse token file");
        let cases = [
            (
                "Bearer t1",
                user(
                    "admin",
                    "uid-1",
                    &["system:masters", "ops", AUTHENTICATED_GROUP],
                ),
            ),
            (
                "Bearer t2",
                user("system:kube-scheduler", "uid-2", &[AUTHENTICATED_GROUP]),
            ),
            (
                "bearer  t3 ",
                user("bob", "uid-3", &["devs", AUTHENTICATED_GROUP]),
            ),
        ];
        for (header, want) in cases {
            assert_eq!(auth.authenticate(Some(header), None), Ok(want), "{header}");
        }
    }

    #[test]
    fn names_the_bad_line() {
        let cases = [
            ("too few fields", "t1,admin,u1\nt2,bob\n", 2),
            ("too many fields", "t1,a,u,g,extra\n", 1),
            ("empty token", "\n\n,admin,u1\n", 3),
            ("empty user", "t1,,u1\n", 1),
            ("unterminated quote", "t1,admin,u1,\"g1,g2\n", 1),
            ("duplicate token", "t1,a,u1\nt1,b,u2\n", 2),
        ];
        for (name, text, want_line) in cases {
            let (_dir, path) = token_file(text);
            match Authenticator::new(Some(&path), false) {
                Err(Error::TokenFileLine { line, .. }) => assert_eq!(line, want_line, "{name}"),
                other => panic!("{name}: want a line error, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_token_file_is_an_error() {
        let dir = tempfile::tempdir().expect("create temp dir");
        let err = Authenticator::new(Some(&dir.path().join("nope.csv")), false)
            .expect_err("missing file");
        assert!(matches!(err, Error::ReadTokenFile { .. }));
    }

    #[test]
    fn bearer_tokens() {
        let (_dir, path) = token_file("secret,admin,u1,system:masters\n");
        let auth = Authenticator::new(Some(&path), true).expect("parse token file");
        assert_eq!(
            auth.authenticate(Some("Bearer secret"), None)
                .map(|u| u.name),
            Ok("admin".to_string())
        );
        // A wrong token is refused even though anonymous access is allowed.
        assert_eq!(
            auth.authenticate(Some("Bearer secreT"), None),
            Err(AuthError::InvalidToken)
        );
        // Other schemes and empty tokens are no credentials at all.
        assert_eq!(
            auth.authenticate(Some("Basic c2VjcmV0"), None),
            Ok(UserInfo::anonymous())
        );
        assert_eq!(
            auth.authenticate(Some("Bearer "), None),
            Ok(UserInfo::anonymous())
        );
    }

    #[test]
    fn anonymous_allowed_or_refused() {
        let open = Authenticator::new(None, true).expect("authenticator");
        assert_eq!(
            open.authenticate(None, None),
            Ok(user(ANONYMOUS_USER, "", &[UNAUTHENTICATED_GROUP]))
        );
        let closed = Authenticator::new(None, false).expect("authenticator");
        assert_eq!(
            closed.authenticate(None, None),
            Err(AuthError::Unauthenticated)
        );
    }

    fn client_cert(cn: Option<&str>, orgs: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().expect("generate key");
        let mut params = CertificateParams::new(Vec::new()).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        // rcgen keeps one value per attribute type; spelling O as a custom type with
        // O's OID (2.5.4.10) adds more, as other CAs may issue.
        for (i, o) in orgs.iter().enumerate() {
            let ty = match i {
                0 => DnType::OrganizationName,
                _ => DnType::CustomDnType(vec![2, 5, 4, 10]),
            };
            params.distinguished_name.push(ty, *o);
        }
        params.self_signed(&key).expect("sign").der().to_vec()
    }

    #[test]
    fn client_certificate_identity() {
        let auth = Authenticator::new(None, false).expect("authenticator");
        let der = client_cert(Some("alice"), &["system:masters", "devs"]);
        assert_eq!(
            auth.authenticate(None, Some(&der)),
            Ok(user(
                "alice",
                "",
                &["system:masters", "devs", AUTHENTICATED_GROUP]
            ))
        );
        // A bearer token wins over the certificate.
        let (_dir, path) = token_file("tok,bob,u2\n");
        let auth = Authenticator::new(Some(&path), false).expect("authenticator");
        assert_eq!(
            auth.authenticate(Some("Bearer tok"), Some(&der))
                .map(|u| u.name),
            Ok("bob".to_string())
        );
        // No CN: the certificate names nobody.
        let der = client_cert(None, &["devs"]);
        assert_eq!(
            auth.authenticate(None, Some(&der)),
            Err(AuthError::Unauthenticated)
        );
        assert!(matches!(
            auth.authenticate(None, Some(b"not a certificate")),
            Err(AuthError::InvalidCertificate(_))
        ));
    }

    #[test]
    fn public_paths() {
        for (path, want) in [
            ("/readyz", true),
            ("/healthz", true),
            ("/livez/etcd", true),
            ("/readyzz", false),
            ("/version", false),
            ("/api/v1/pods", false),
        ] {
            assert_eq!(is_public_path(path), want, "{path}");
        }
    }

    #[test]
    fn allow_all_allows() {
        let attrs = RequestAttributes {
            verb: "delete".into(),
            resource: "pods".into(),
            namespace: "default".into(),
            name: "web".into(),
            path: "/api/v1/namespaces/default/pods/web".into(),
            ..Default::default()
        };
        assert!(attrs.is_resource_request());
        assert_eq!(
            AllowAll.authorize(&UserInfo::anonymous(), &attrs),
            Decision::Allow
        );
    }
}
