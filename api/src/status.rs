//! The Kubernetes `Status` object: how every API error is reported.
//!
//! The apiserver converts its errors into a [`Status`] once, at the edge; kubectl builds
//! its messages from `reason`, `details.kind`, `details.name` and `details.causes`.

use serde::{Deserialize, Serialize};

use crate::validation::FieldError;

/// A Kubernetes `Status` (meta/v1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub kind: String,
    pub api_version: String,
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// `Success` or `Failure`.
    pub status: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<StatusDetails>,
    pub code: u16,
}

/// `Status.details`: what object the status is about, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatusDetails {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<StatusCause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<i32>,
}

/// One cause of a failure, usually one bad field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct StatusCause {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub field: String,
}

impl Status {
    fn failure(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            status: "Failure".into(),
            message: message.into(),
            reason: reason.into(),
            code,
            ..Default::default()
        }
    }

    /// A `Success` status, as returned by some deletes.
    pub fn success(details: Option<StatusDetails>) -> Self {
        Status {
            kind: "Status".into(),
            api_version: "v1".into(),
            status: "Success".into(),
            code: 200,
            details,
            ..Default::default()
        }
    }

    fn with_details(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details = Some(StatusDetails {
            name: name.into(),
            group: group.into(),
            kind: kind.into(),
            ..Default::default()
        });
        self
    }

    /// 404: `pods "x" not found` (`group_resource` as in `deployments.apps`).
    pub fn not_found(group: &str, plural: &str, name: &str) -> Self {
        let gr = group_resource(group, plural);
        Self::failure(404, "NotFound", format!("{gr} \"{name}\" not found"))
            .with_details(group, plural, name)
    }

    /// 404 for a path that names no resource.
    pub fn path_not_found() -> Self {
        Self::failure(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details("", "", "")
    }

    /// 409: `pods "x" already exists`.
    pub fn already_exists(group: &str, plural: &str, name: &str) -> Self {
        let gr = group_resource(group, plural);
        Self::failure(
            409,
            "AlreadyExists",
            format!("{gr} \"{name}\" already exists"),
        )
        .with_details(group, plural, name)
    }

    /// 409: the object was modified since the given resourceVersion.
    pub fn conflict(group: &str, plural: &str, name: &str) -> Self {
        let gr = group_resource(group, plural);
        Self::failure(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {gr} \"{name}\": the object has been modified; \
                 please apply your changes to the latest version and try again"
            ),
        )
        .with_details(group, plural, name)
    }

    /// 409 Conflict with a custom message (e.g. a precondition that failed).
    pub fn conflict_message(group: &str, plural: &str, name: &str, message: &str) -> Self {
        let gr = group_resource(group, plural);
        Self::failure(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {gr} \"{name}\": {message}"),
        )
        .with_details(group, plural, name)
    }

    /// 422: `The Deployment "bad" is invalid: …`, one cause per field error.
    pub fn invalid(group: &str, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let summary: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
        let mut status = Self::failure(
            422,
            "Invalid",
            format!(
                "{kind}{} \"{name}\" is invalid: {}",
                group_suffix(group),
                summary.join(", ")
            ),
        )
        .with_details(group, kind, name);
        if let Some(details) = status.details.as_mut() {
            details.causes = errors.iter().map(FieldError::to_cause).collect();
        }
        status
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::failure(400, "BadRequest", message)
    }

    /// 401 Unauthorized.
    pub fn unauthorized() -> Self {
        Self::failure(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden (namespace terminating, authorization).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::failure(403, "Forbidden", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        Self::failure(405, "MethodNotAllowed", message)
    }

    /// 410 Gone: the requested resourceVersion was compacted.
    pub fn expired(message: impl Into<String>) -> Self {
        Self::failure(410, "Expired", message)
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::failure(413, "RequestEntityTooLarge", message)
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        Self::failure(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/vnd.kubernetes.protobuf (got {content_type:?})"),
        )
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::failure(500, "InternalError", message)
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::failure(503, "ServiceUnavailable", message)
    }

    /// 504 Timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::failure(504, "Timeout", message)
    }

    /// Serialises the status as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("a Status always serialises")
    }
}

fn group_suffix(group: &str) -> String {
    if group.is_empty() {
        String::new()
    } else {
        format!(".{group}")
    }
}

fn group_resource(group: &str, plural: &str) -> String {
    format!("{plural}{}", group_suffix(group))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_match_kubernetes() {
        assert_eq!(
            Status::not_found("apps", "deployments", "x").message,
            "deployments.apps \"x\" not found"
        );
        assert_eq!(
            Status::not_found("", "pods", "x").message,
            "pods \"x\" not found"
        );
        assert_eq!(
            Status::already_exists("", "pods", "x").reason,
            "AlreadyExists"
        );
        assert_eq!(Status::conflict("", "pods", "x").code, 409);
        let json = Status::expired("too old").to_json();
        assert_eq!(json["kind"], "Status");
        assert_eq!(json["code"], 410);
        assert_eq!(json["reason"], "Expired");
    }
}
