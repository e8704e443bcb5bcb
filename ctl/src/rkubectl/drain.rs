//! `rkubectl drain NODE`: cordon the node, then evict its pods through the
//! `pods/{name}/eviction` subresource (deleting them only where the server has no such
//! subresource), refusing DaemonSet-managed pods unless `--ignore-daemonsets` and
//! unmanaged pods unless `--force`, and wait until they are gone.
//!
//! As kubectl does, every pod is evicted at once; an eviction the server refuses with
//! 429 (a disruption budget) is tried again every 5 s until `--timeout`.

use std::time::{Duration, Instant};

use clap::Args;
use reqwest::Method;
use serde_json::{json, Value};

use super::client::{self, Body, Client};
use super::Ctx;

/// How long drain waits before asking again for an eviction the server refused with
/// 429, as kubectl does.
const EVICTION_RETRY: Duration = Duration::from_secs(5);

/// How often drain looks whether an evicted pod is gone.
const GONE_POLL: Duration = Duration::from_millis(250);

/// Arguments of `drain`.
#[derive(Debug, Args)]
pub struct DrainArgs {
    /// The node (`NAME` or `node/NAME`).
    pub node: String,
    /// Leave DaemonSet-managed pods where they are.
    #[arg(long)]
    pub ignore_daemonsets: bool,
    /// Also delete pods no controller manages (they are not recreated).
    #[arg(long)]
    pub force: bool,
    /// Also delete pods using emptyDir volumes (their data is lost).
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Seconds each pod gets to terminate (-1: the pod's own).
    #[arg(long, default_value_t = -1, allow_negative_numbers = true)]
    pub grace_period: i64,
    /// Give up after this long, as kubectl's `--timeout` (`90s`, `2m`, `1h`; 0: never).
    #[arg(long, value_parser = parse_timeout)]
    pub timeout: Option<Duration>,
    /// Give up after this many seconds (0: never); `--timeout` wins when both are given.
    #[arg(long, default_value_t = 0)]
    pub timeout_seconds: u64,
}

/// Parses kubectl's `--timeout`: a Go-style duration (`30s`, `2m`, `1h30m`) or a bare
/// number of seconds.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let d: jiff::SignedDuration = s
        .parse()
        .map_err(|e| format!("invalid duration {s:?}: {e}"))?;
    Duration::try_from(d).map_err(|_| format!("invalid duration {s:?}: negative"))
}

/// A duration as Go prints it (`5s`, `1m30s`, `1h0m0s`, `300ms`), for kubectl's
/// messages (whole milliseconds below a second, whole seconds above).
fn go_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 && d.subsec_millis() > 0 {
        return format!("{}ms", d.subsec_millis());
    }
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s}s"),
        _ => format!("{h}h{m}m{s}s"),
    }
}

/// What drain does with one pod.
#[derive(Debug, PartialEq, Eq)]
enum Plan {
    Evict,
    /// Skipped, with the warning to print.
    Skip(&'static str),
    /// Refused, with the reason (the whole drain fails).
    Refuse(&'static str),
}

fn plan(pod: &Value, args: &DrainArgs) -> Plan {
    if pod["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string() {
        return Plan::Skip("ignoring mirror Pods");
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    let finished = phase == "Succeeded" || phase == "Failed";
    let controller = pod["metadata"]["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"] == true);
    if controller.is_some_and(|c| c["kind"] == "DaemonSet") {
        return if args.ignore_daemonsets {
            Plan::Skip("ignoring DaemonSet-managed Pods")
        } else {
            Plan::Refuse("cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)")
        };
    }
    if controller.is_none() && !finished && !args.force {
        return Plan::Refuse(
            "cannot delete Pods that declare no controller (use --force to override)",
        );
    }
    let empty_dir = pod["spec"]["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v.get("emptyDir").is_some());
    if empty_dir && !finished && !args.delete_emptydir_data {
        return Plan::Refuse(
            "cannot delete Pods with local storage (use --delete-emptydir-data to override)",
        );
    }
    Plan::Evict
}

/// Runs `drain`.
///
/// # Errors
/// When pods are refused, the node is unknown, or an eviction fails or times out.
pub async fn run(ctx: &Ctx, args: DrainArgs) -> anyhow::Result<()> {
    let node = args
        .node
        .split_once('/')
        .map_or(args.node.as_str(), |(_, n)| n)
        .to_string();
    let path = format!("/api/v1/nodes/{node}");
    let current = ctx.client.get(&path, &[]).await?;
    if current["spec"]["unschedulable"] != true {
        ctx.client
            .send(
                Method::PATCH,
                &path,
                &[],
                None,
                Some(Body::json(
                    "application/merge-patch+json",
                    &json!({"spec": {"unschedulable": true}}),
                )),
            )
            .await?;
        println!("node/{node} cordoned");
    } else {
        println!("node/{node} already cordoned");
    }
    let pods = ctx
        .client
        .get(
            "/api/v1/pods",
            &[("fieldSelector", format!("spec.nodeName={node}"))],
        )
        .await?;
    let mut evict = Vec::new();
    let mut refused: Vec<(&str, String)> = Vec::new();
    let mut skipped: Vec<(&str, String)> = Vec::new();
    for pod in pods["items"].as_array().into_iter().flatten() {
        let target = PodRef::of(pod);
        match plan(pod, &args) {
            Plan::Evict => evict.push(target),
            Plan::Skip(why) => skipped.push((why, target.key())),
            Plan::Refuse(why) => refused.push((why, target.key())),
        }
    }
    if !refused.is_empty() {
        let mut msg = String::from("unable to drain node because of these errors:");
        for (why, key) in &refused {
            msg.push_str(&format!("\n  {why}: {key}"));
        }
        anyhow::bail!("{msg}");
    }
    for (why, key) in &skipped {
        eprintln!("Warning: {why}: {key}");
    }
    let timeout = args
        .timeout
        .unwrap_or(Duration::from_secs(args.timeout_seconds));
    let limits = Limits {
        grace: (args.grace_period >= 0).then_some(args.grace_period),
        deadline: (!timeout.is_zero()).then(|| Instant::now() + timeout),
        timeout,
        retry: EVICTION_RETRY,
        poll: GONE_POLL,
    };
    let results =
        futures::future::join_all(evict.iter().map(|pod| drain_pod(&ctx.client, pod, &limits)))
            .await;
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    if !errors.is_empty() {
        anyhow::bail!(
            "unable to drain node {node:?} due to error: {}",
            errors.join(", ")
        );
    }
    println!("node/{node} drained");
    Ok(())
}

/// The pod drain evicts.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRef {
    namespace: String,
    name: String,
    uid: Option<String>,
}

impl PodRef {
    fn of(pod: &Value) -> PodRef {
        let meta = &pod["metadata"];
        PodRef {
            namespace: meta["namespace"].as_str().unwrap_or_default().to_string(),
            name: meta["name"].as_str().unwrap_or_default().to_string(),
            uid: meta["uid"].as_str().map(str::to_string),
        }
    }

    /// `namespace/name`.
    fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// How drain evicts and waits.
struct Limits {
    /// `deleteOptions.gracePeriodSeconds` (`None`: the pod's own).
    grace: Option<i64>,
    /// When drain gives up (`None`: never), and the `--timeout` it came from.
    deadline: Option<Instant>,
    timeout: Duration,
    /// The wait before a refused (429) eviction is tried again.
    retry: Duration,
    /// How often to look whether the pod is gone.
    poll: Duration,
}

impl Limits {
    fn expired(&self) -> bool {
        self.deadline.is_some_and(|d| Instant::now() >= d)
    }

    /// `d`, but not past the deadline.
    fn capped(&self, d: Duration) -> Duration {
        self.deadline.map_or(d, |deadline| {
            d.min(deadline.saturating_duration_since(Instant::now()))
        })
    }
}

/// What the apiserver is asked about one pod; a trait so the eviction loop can be
/// tested against a recording fake.
trait PodApi {
    /// POSTs `eviction` to the pod's `eviction` subresource.
    async fn evict(&self, pod: &PodRef, eviction: &Value) -> client::Result<()>;
    /// DELETEs the pod with `options` (a `DeleteOptions`).
    async fn delete(&self, pod: &PodRef, options: &Value) -> client::Result<()>;
    /// GETs the pod.
    async fn get(&self, pod: &PodRef) -> client::Result<Value>;
}

fn pod_path(pod: &PodRef) -> String {
    format!("/api/v1/namespaces/{}/pods/{}", pod.namespace, pod.name)
}

impl PodApi for Client {
    async fn evict(&self, pod: &PodRef, eviction: &Value) -> client::Result<()> {
        let path = format!("{}/eviction", pod_path(pod));
        let body = Body::json("application/json", eviction);
        self.send(Method::POST, &path, &[], None, Some(body))
            .await
            .map(|_| ())
    }

    async fn delete(&self, pod: &PodRef, options: &Value) -> client::Result<()> {
        let body = Body::json("application/json", options);
        self.send(Method::DELETE, &pod_path(pod), &[], None, Some(body))
            .await
            .map(|_| ())
    }

    async fn get(&self, pod: &PodRef) -> client::Result<Value> {
        Client::get(self, &pod_path(pod), &[]).await
    }
}

/// How a pod left.
#[derive(Debug, PartialEq, Eq)]
enum Gone {
    /// Evicted through the subresource.
    Evicted,
    /// Deleted, the server having no eviction subresource.
    Deleted,
    /// It was gone before drain got to it.
    Already,
}

/// The message of a client error, as kubectl quotes an API error inside its own.
fn message(e: &client::Error) -> String {
    match e.status() {
        Some(s) => s.message.clone(),
        None => e.to_string(),
    }
}

/// Evicts one pod (retrying 429s, deleting where the server cannot evict) and waits
/// until it is gone, printing what kubectl prints. The error reads like kubectl's.
async fn drain_pod(api: &impl PodApi, pod: &PodRef, limits: &Limits) -> Result<Gone, String> {
    let (ns, name) = (&pod.namespace, &pod.name);
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction",
        "metadata": {"name": name, "namespace": ns},
        "deleteOptions": {"gracePeriodSeconds": limits.grace}});
    let how = loop {
        println!("evicting pod {ns}/{name}");
        if limits.expired() {
            return Err(format!(
                "error when evicting pods/{name:?} -n {ns:?}: global timeout reached: {}",
                go_duration(limits.timeout)
            ));
        }
        let e = match api.evict(pod, &eviction).await {
            Ok(()) => break Gone::Evicted,
            Err(e) => e,
        };
        match e.status() {
            // The pod itself is gone: nothing to wait for.
            Some(s) if s.code == 404 && s.details.as_ref().is_some_and(|d| d.name == *name) => {
                return Ok(Gone::Already);
            }
            // No eviction subresource on this server: delete, as kubectl does there.
            Some(s) if s.code == 404 => {
                let options = json!({"gracePeriodSeconds": limits.grace});
                match api.delete(pod, &options).await {
                    Ok(()) => break Gone::Deleted,
                    Err(e) if e.is_not_found() => return Ok(Gone::Already),
                    Err(e) => {
                        return Err(format!(
                            "error when deleting pods/{name:?} -n {ns:?}: {}",
                            message(&e)
                        ))
                    }
                }
            }
            Some(s) if s.code == 429 => {
                eprintln!(
                    "error when evicting pods/{name:?} -n {ns:?} (will retry after {}): {}",
                    go_duration(limits.retry),
                    s.message
                );
                tokio::time::sleep(limits.capped(limits.retry)).await;
            }
            _ => {
                return Err(format!(
                    "error when evicting pods/{name:?} -n {ns:?}: {}",
                    message(&e)
                ))
            }
        }
    };
    loop {
        match api.get(pod).await {
            Err(e) if e.is_not_found() => break,
            Ok(p) if p["metadata"]["uid"].as_str() != pod.uid.as_deref() => break,
            Ok(_) => {}
            Err(e) => {
                return Err(format!(
                    "error when waiting for pod {name:?} in namespace {ns:?} to terminate: {}",
                    message(&e)
                ))
            }
        }
        if limits.expired() {
            return Err(format!(
                "error when waiting for pod {name:?} in namespace {ns:?} to terminate: context deadline exceeded"
            ));
        }
        tokio::time::sleep(limits.capped(limits.poll)).await;
    }
    match how {
        Gone::Deleted => println!("pod/{name} deleted"),
        _ => println!("pod/{name} evicted"),
    }
    Ok(how)
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::VecDeque;

    use super::*;
    use crate::rkubectl::client::{ApiStatus, Details};

    /// Answers queued per call kind, and every call made, in order.
    #[derive(Default)]
    struct FakeApi {
        evictions: RefCell<VecDeque<client::Result<()>>>,
        deletes: RefCell<VecDeque<client::Result<()>>>,
        gets: RefCell<VecDeque<client::Result<Value>>>,
        calls: RefCell<Vec<String>>,
    }

    impl FakeApi {
        fn record(&self, call: String) {
            self.calls.borrow_mut().push(call);
        }
    }

    impl PodApi for FakeApi {
        async fn evict(&self, pod: &PodRef, eviction: &Value) -> client::Result<()> {
            self.record(format!(
                "evict {} {} grace={}",
                pod.key(),
                eviction["apiVersion"],
                eviction["deleteOptions"]["gracePeriodSeconds"]
            ));
            self.evictions.borrow_mut().pop_front().unwrap_or(Ok(()))
        }

        async fn delete(&self, pod: &PodRef, options: &Value) -> client::Result<()> {
            self.record(format!(
                "delete {} grace={}",
                pod.key(),
                options["gracePeriodSeconds"]
            ));
            self.deletes.borrow_mut().pop_front().unwrap_or(Ok(()))
        }

        async fn get(&self, pod: &PodRef) -> client::Result<Value> {
            self.record(format!("get {}", pod.key()));
            self.gets
                .borrow_mut()
                .pop_front()
                .unwrap_or_else(|| Err(status(404, "NotFound", "pods", &pod.name)))
        }
    }

    fn status(code: u16, reason: &str, kind: &str, name: &str) -> client::Error {
        client::Error::Status(Box::new(ApiStatus {
            reason: reason.into(),
            message: format!("{reason} message"),
            code,
            details: Some(Details {
                name: name.into(),
                kind: kind.into(),
                causes: vec![],
            }),
            context: None,
        }))
    }

    fn web() -> PodRef {
        PodRef {
            namespace: "d".into(),
            name: "web".into(),
            uid: Some("u1".into()),
        }
    }

    fn limits(timeout: Option<Duration>) -> Limits {
        Limits {
            grace: Some(3),
            deadline: timeout.map(|t| Instant::now() + t),
            timeout: timeout.unwrap_or_default(),
            retry: Duration::from_millis(5),
            poll: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn evictions_refused_with_429_are_tried_again() {
        let api = FakeApi::default();
        api.evictions.borrow_mut().extend([
            Err(status(429, "TooManyRequests", "", "")),
            Err(status(429, "TooManyRequests", "", "")),
        ]);
        api.gets.borrow_mut().extend([
            Ok(json!({"metadata": {"uid": "u1"}})),
            Ok(json!({"metadata": {"uid": "u2"}})),
        ]);
        assert_eq!(
            drain_pod(&api, &web(), &limits(None)).await,
            Ok(Gone::Evicted)
        );
        assert_eq!(
            *api.calls.borrow(),
            [
                "evict d/web \"policy/v1\" grace=3",
                "evict d/web \"policy/v1\" grace=3",
                "evict d/web \"policy/v1\" grace=3",
                "get d/web",
                "get d/web",
            ],
            "a pod of the same name but another uid is a new pod: the old one is gone"
        );
    }

    #[tokio::test]
    async fn only_a_missing_subresource_falls_back_to_delete() {
        // The server has no eviction subresource: 404 without the pod's name.
        let api = FakeApi::default();
        api.evictions
            .borrow_mut()
            .push_back(Err(status(404, "NotFound", "", "")));
        assert_eq!(
            drain_pod(&api, &web(), &limits(None)).await,
            Ok(Gone::Deleted)
        );
        assert_eq!(
            *api.calls.borrow(),
            [
                "evict d/web \"policy/v1\" grace=3",
                "delete d/web grace=3",
                "get d/web"
            ]
        );

        // The pod is gone: 404 naming it. Nothing is deleted, nothing waited for.
        let api = FakeApi::default();
        api.evictions
            .borrow_mut()
            .push_back(Err(status(404, "NotFound", "pods", "web")));
        assert_eq!(
            drain_pod(&api, &web(), &limits(None)).await,
            Ok(Gone::Already)
        );
        assert_eq!(*api.calls.borrow(), ["evict d/web \"policy/v1\" grace=3"]);
    }

    #[tokio::test]
    async fn other_refusals_and_timeouts_read_like_kubectl() {
        let api = FakeApi::default();
        api.evictions
            .borrow_mut()
            .push_back(Err(status(403, "Forbidden", "", "")));
        assert_eq!(
            drain_pod(&api, &web(), &limits(None)).await,
            Err("error when evicting pods/\"web\" -n \"d\": Forbidden message".into())
        );

        // Refused until the deadline.
        let api = FakeApi::default();
        api.evictions
            .borrow_mut()
            .extend((0..1000).map(|_| Err(status(429, "TooManyRequests", "", ""))));
        assert_eq!(
            drain_pod(&api, &web(), &limits(Some(Duration::from_millis(30)))).await,
            Err("error when evicting pods/\"web\" -n \"d\": global timeout reached: 30ms".into())
        );
        assert!(api.calls.borrow().len() > 1, "retried before giving up");

        // Evicted, but never gone.
        let api = FakeApi::default();
        api.gets
            .borrow_mut()
            .extend((0..10_000).map(|_| Ok(json!({"metadata": {"uid": "u1"}}))));
        let err = drain_pod(&api, &web(), &limits(Some(Duration::from_millis(30))))
            .await
            .expect_err("times out");
        assert_eq!(
            err,
            "error when waiting for pod \"web\" in namespace \"d\" to terminate: context deadline exceeded"
        );
    }

    #[test]
    fn timeouts_read_and_print_like_go() {
        assert_eq!(parse_timeout("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_timeout("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_timeout("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_timeout("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_timeout("0s"), Ok(Duration::ZERO));
        assert!(parse_timeout("5x").is_err());
        assert!(parse_timeout("-5s").is_err());
        for (millis, want) in [
            (5_000, "5s"),
            (90_000, "1m30s"),
            (3_600_000, "1h0m0s"),
            (0, "0s"),
            (300, "300ms"),
        ] {
            assert_eq!(go_duration(Duration::from_millis(millis)), want);
        }
    }

    fn args(ignore_daemonsets: bool, force: bool) -> DrainArgs {
        DrainArgs {
            node: "n".into(),
            ignore_daemonsets,
            force,
            delete_emptydir_data: false,
            grace_period: -1,
            timeout: None,
            timeout_seconds: 0,
        }
    }

    #[test]
    fn plans() {
        let owned = |kind: &str| json!({"metadata": {"ownerReferences": [{"kind": kind, "name": "x", "controller": true}]}});
        let bare = json!({"metadata": {}});
        let done = json!({"metadata": {}, "status": {"phase": "Succeeded"}});
        let cases = [
            (
                "rs pod",
                owned("ReplicaSet"),
                args(false, false),
                Plan::Evict,
            ),
            (
                "ds refused",
                owned("DaemonSet"),
                args(false, false),
                Plan::Refuse(
                    "cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore)",
                ),
            ),
            (
                "ds ignored",
                owned("DaemonSet"),
                args(true, false),
                Plan::Skip("ignoring DaemonSet-managed Pods"),
            ),
            (
                "bare refused",
                bare.clone(),
                args(false, false),
                Plan::Refuse(
                    "cannot delete Pods that declare no controller (use --force to override)",
                ),
            ),
            ("bare forced", bare, args(false, true), Plan::Evict),
            ("finished bare", done, args(false, false), Plan::Evict),
        ];
        for (name, pod, a, want) in cases {
            assert_eq!(plan(&pod, &a), want, "{name}");
        }
    }
}
