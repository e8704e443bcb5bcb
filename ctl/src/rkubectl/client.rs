//! The REST client: HTTPS to the apiserver with the kubeconfig's CA, client certificate
//! or bearer token, JSON in and out, and Kubernetes `Status` errors as typed values.

use std::fmt;

use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::config::Resolved;

/// The Accept header kubectl sends for server-side printed tables.
pub const TABLE_ACCEPT: &str =
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to build the HTTP client")]
    Build(#[source] reqwest::Error),
    #[error("invalid client certificate or key")]
    Identity(#[source] reqwest::Error),
    #[error("invalid certificate authority")]
    Ca(#[source] reqwest::Error),
    #[error("the server has no address (no `server` in the kubeconfig cluster)")]
    NoServer,
    #[error("request to {url} failed: {source}")]
    Send {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the server returned an unreadable response for {url}")]
    Decode {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    Status(Box<ApiStatus>),
}

/// The result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One cause of an `Invalid` status.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Cause {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub field: String,
}

/// Details of a Status.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Details {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub causes: Vec<Cause>,
}

/// A Kubernetes `Status` failure, printed the way kubectl prints it.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiStatus {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub details: Option<Details>,
    /// kubectl's "error when creating \"file\"" prefix, when set by the verb.
    #[serde(skip)]
    pub context: Option<String>,
}

impl fmt::Display for ApiStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reason == "Invalid" {
            if let Some(d) = self.details.as_ref().filter(|d| !d.causes.is_empty()) {
                write!(f, "The {} {:?} is invalid: ", d.kind, d.name)?;
                if let [one] = d.causes.as_slice() {
                    return write!(f, "{}: {}", one.field, one.message);
                }
                for c in &d.causes {
                    write!(f, "\n* {}: {}", c.field, c.message)?;
                }
                return Ok(());
            }
        }
        let reason = if self.reason.is_empty() {
            "Unknown"
        } else {
            &self.reason
        };
        write!(f, "Error from server ({reason}): ")?;
        if let Some(c) = &self.context {
            write!(f, "{c}: ")?;
        }
        write!(f, "{}", self.message)
    }
}

impl Error {
    /// The API status, when the server answered with one.
    pub fn status(&self) -> Option<&ApiStatus> {
        match self {
            Error::Status(s) => Some(s),
            _ => None,
        }
    }

    /// Whether the server said 404.
    pub fn is_not_found(&self) -> bool {
        self.status().is_some_and(|s| s.code == 404)
    }

    /// Adds kubectl's "error when creating …" context to a status error.
    pub fn with_context(self, context: String) -> Error {
        match self {
            Error::Status(mut s) => {
                s.context = Some(context);
                Error::Status(s)
            }
            other => other,
        }
    }
}

/// A request body and its content type.
pub struct Body<'a> {
    pub content_type: &'a str,
    pub bytes: Vec<u8>,
}

impl<'a> Body<'a> {
    /// A JSON body with the given content type.
    pub fn json(content_type: &'a str, value: &Value) -> Body<'a> {
        Body {
            content_type,
            bytes: serde_json::to_vec(value).expect("a JSON value always serializes"),
        }
    }
}

/// An apiserver client for one kubeconfig context.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    /// The namespace from `-n`, the context, or `default`.
    pub namespace: String,
}

impl Client {
    /// Builds a client for `resolved`, using `namespace` (from `-n`) when given.
    ///
    /// # Errors
    /// When the credentials or CA are invalid.
    pub fn new(resolved: &Resolved, namespace: Option<String>) -> Result<Client> {
        if resolved.server.is_empty() {
            return Err(Error::NoServer);
        }
        let mut builder = reqwest::Client::builder().use_rustls_tls();
        if let Some(ca) = &resolved.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(ca).map_err(Error::Ca)? {
                builder = builder.add_root_certificate(cert);
            }
            builder = builder.tls_built_in_root_certs(false);
        }
        if resolved.insecure {
            builder = builder.danger_accept_invalid_certs(true);
        }
        if let (Some(cert), Some(key)) = (&resolved.client_cert_pem, &resolved.client_key_pem) {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(Error::Identity)?);
        }
        if let Some(token) = &resolved.token {
            let mut headers = reqwest::header::HeaderMap::new();
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| Error::NoServer)?;
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(Client {
            http: builder.build().map_err(Error::Build)?,
            base: resolved.server.trim_end_matches('/').to_string(),
            namespace: namespace
                .or_else(|| resolved.namespace.clone())
                .unwrap_or_else(|| "default".into()),
        })
    }

    /// The server's base URL.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the HTTP status and the decoded JSON answer;
    /// non-2xx answers become [`Error::Status`].
    ///
    /// # Errors
    /// On transport errors, undecodable answers and failure statuses.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        accept: Option<&str>,
        body: Option<Body<'_>>,
    ) -> Result<(StatusCode, Value)> {
        let response = self.start(method, path, query, accept, body).await?;
        let status = response.status();
        let url = response.url().to_string();
        let bytes = response.bytes().await.map_err(|source| Error::Send {
            url: url.clone(),
            source,
        })?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            match serde_json::from_slice(&bytes) {
                Ok(v) => v,
                Err(source) if status.is_success() => return Err(Error::Decode { url, source }),
                Err(_) => Value::Null,
            }
        };
        if !status.is_success() {
            return Err(Error::Status(Box::new(status_of(status, &value, &bytes))));
        }
        Ok((status, value))
    }

    /// Sends a request and returns the response unread (watches, streams); a
    /// non-2xx answer becomes [`Error::Status`].
    ///
    /// # Errors
    /// On transport errors and failure statuses.
    pub async fn start(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        accept: Option<&str>,
        body: Option<Body<'_>>,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{path}", self.base);
        tracing::debug!(%method, %url, ?query, "request");
        let mut req = self.http.request(method, &url).query(query);
        req = req.header(
            reqwest::header::ACCEPT,
            accept.unwrap_or("application/json"),
        );
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, b.content_type)
                .body(b.bytes);
        }
        let response = req.send().await.map_err(|source| Error::Send {
            url: url.clone(),
            source,
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response.bytes().await.unwrap_or_default();
        let value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Err(Error::Status(Box::new(status_of(status, &value, &bytes))))
    }

    /// GET `path` as JSON.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<Value> {
        Ok(self.send(Method::GET, path, query, None, None).await?.1)
    }
}

/// The failure a non-2xx answer describes: its `Status` body, or one made up from the
/// HTTP status when the body is not a Status.
fn status_of(status: StatusCode, value: &Value, bytes: &[u8]) -> ApiStatus {
    if value["kind"] == "Status" {
        if let Ok(s) = serde_json::from_value::<ApiStatus>(value.clone()) {
            return s;
        }
    }
    let reason = match status {
        StatusCode::NOT_FOUND => "NotFound",
        StatusCode::UNAUTHORIZED => "Unauthorized",
        StatusCode::FORBIDDEN => "Forbidden",
        StatusCode::CONFLICT => "Conflict",
        StatusCode::BAD_REQUEST => "BadRequest",
        _ => "InternalError",
    };
    let text = String::from_utf8_lossy(bytes).trim().to_string();
    ApiStatus {
        reason: reason.into(),
        message: if text.is_empty() {
            "the server could not find the requested resource".into()
        } else {
            text
        },
        code: status.as_u16(),
        details: None,
        context: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn statuses_print_like_kubectl() {
        let not_found: ApiStatus = serde_json::from_value(json!({
            "kind": "Status", "reason": "NotFound", "code": 404,
            "message": "pods \"x\" not found"
        }))
        .expect("status");
        assert_eq!(
            not_found.to_string(),
            "Error from server (NotFound): pods \"x\" not found"
        );
        let invalid: ApiStatus = serde_json::from_value(json!({
            "kind": "Status", "reason": "Invalid", "code": 422, "message": "m",
            "details": {"name": "bad", "kind": "Deployment", "causes": [
                {"reason": "FieldValueInvalid", "field": "spec.replicas",
                 "message": "Invalid value: -1: must be greater than or equal to 0"}]}
        }))
        .expect("status");
        assert_eq!(
            invalid.to_string(),
            "The Deployment \"bad\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0"
        );
    }
}
