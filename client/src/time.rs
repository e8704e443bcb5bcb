//! The current time as Kubernetes timestamps hold it (k8s-openapi's chrono has no clock).

use k8s_openapi::chrono::{DateTime, Utc};

/// Now, for `Time` and `MicroTime` fields (renewTime, lastTransitionTime, events…).
pub fn now() -> DateTime<Utc> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX);
    DateTime::from_timestamp(secs, since_epoch.subsec_nanos()).unwrap_or(DateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    #[test]
    fn now_is_after_the_epoch_and_close_to_the_system_clock() {
        let now = super::now();
        let system = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("the clock is after 1970")
            .as_secs() as i64;
        assert!((now.timestamp() - system).abs() <= 1, "{now}");
    }
}
