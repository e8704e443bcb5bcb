//! How a failed reconcile is reported before the runner retries it. A write that lost a
//! race (409 Conflict: the informer cache was behind the apiserver, and the next event
//! or retry sees the newer object) is routine and logged at debug, as Kubernetes'
//! controllers log the sync errors they retry at low verbosity; anything else is
//! unexpected and logged at warn, with its whole chain of causes.

use std::error::Error as StdError;
use std::fmt::Display;

use rkube_client::api;
use tracing::{debug, warn};

/// Whether `err` or one of its sources is a 409 Conflict from the apiserver.
pub fn is_conflict(err: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(current) = next {
        if current
            .downcast_ref::<api::Error>()
            .is_some_and(api::Error::is_conflict)
        {
            return true;
        }
        next = current.source();
    }
    false
}

/// The sources of `err`, outermost first, joined by `": "` (empty without any).
pub fn causes(err: &(dyn StdError + 'static)) -> String {
    let mut causes = Vec::new();
    let mut next = err.source();
    while let Some(current) = next {
        causes.push(current.to_string());
        next = current.source();
    }
    causes.join(": ")
}

/// Logs a failed reconcile of `object` by `controller`: at debug for a conflict, at
/// warn otherwise.
pub fn report(controller: &'static str, object: &dyn Display, err: &(dyn StdError + 'static)) {
    let cause = causes(err);
    if is_conflict(err) {
        debug!(controller, %object, error = %err, %cause, "reconcile lost a write race; retrying");
    } else {
        warn!(controller, %object, error = %err, %cause, "reconcile failed; retrying");
    }
}

#[cfg(test)]
mod tests {
    use rkube_api::status::Status;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    enum Outer {
        #[error("failed to update status")]
        Update(#[source] Inner),
        #[error("failed to write")]
        Write(#[source] api::Error),
    }

    #[derive(Debug, thiserror::Error)]
    #[error("failed to replace")]
    struct Inner(#[source] api::Error);

    fn api_error(status: Status) -> api::Error {
        api::Error::Api(Box::new(status))
    }

    #[test]
    fn conflicts_are_found_anywhere_in_the_chain() {
        let conflict = || api_error(Status::conflict("apps", "deployments", "web"));
        let cases: Vec<(&str, Outer, bool)> = vec![
            ("direct conflict", Outer::Write(conflict()), true),
            ("nested conflict", Outer::Update(Inner(conflict())), true),
            (
                "already exists is no conflict",
                Outer::Write(api_error(Status::already_exists(
                    "apps",
                    "deployments",
                    "web",
                ))),
                false,
            ),
            (
                "not found",
                Outer::Update(Inner(api_error(Status::not_found("", "pods", "p")))),
                false,
            ),
        ];
        for (name, err, want) in cases {
            assert_eq!(is_conflict(&err), want, "{name}");
        }
    }

    #[test]
    fn causes_list_every_source() {
        let err = Outer::Update(Inner(api_error(Status::not_found("", "pods", "p"))));
        let chain = causes(&err);
        assert!(
            chain.starts_with("failed to replace: apiserver answered 404"),
            "{chain}"
        );
        assert_eq!(causes(&api_error(Status::internal("boom"))), "");
    }
}
