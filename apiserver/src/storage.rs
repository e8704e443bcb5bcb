//! etcd storage: one key per object, `resourceVersion` = the key's `mod_revision`.
//!
//! Objects are stored as JSON without `metadata.resourceVersion`; readers inject the
//! revision. Every write is one etcd transaction: create-if-absent compares the key's
//! `create_revision` with 0, updates and deletes compare its `mod_revision` with the
//! expected one. Allocation claims (a Service's ClusterIP and NodePorts) are extra keys
//! created and released in the same transaction, so two Services can never hold the
//! same address, whichever apiserver replica allocated it.

use etcd_client::{
    Compare, CompareOp, GetOptions, KvClient, PutOptions, SortOrder, SortTarget, Txn, TxnOp,
    TxnOpResponse,
};
use serde_json::Value;

use rkube_api::{object, Resource};

/// The root of every key rkube writes.
pub const PREFIX: &str = "/registry/";

/// What can go wrong talking to etcd.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the object already exists")]
    AlreadyExists,
    #[error("the object does not exist")]
    NotFound,
    #[error("the object was modified (stored revision {stored})")]
    Conflict { stored: i64 },
    #[error("allocation {0} is already taken")]
    ClaimTaken(String),
    #[error("revision {requested} has been compacted")]
    Compacted { requested: i64 },
    #[error("the lease the write was to attach no longer exists")]
    LeaseNotFound,
    #[error("etcd request failed")]
    Etcd(#[from] etcd_client::Error),
    #[error("stored object at {key} is not valid JSON")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The etcd key of an object.
pub fn key(resource: &Resource, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if resource.namespaced() => format!("{PREFIX}{}/{ns}/{name}", resource.plural),
        _ => format!("{PREFIX}{}/{name}", resource.plural),
    }
}

/// The key prefix of a collection: all namespaces, or one.
pub fn collection_prefix(resource: &Resource, namespace: Option<&str>) -> String {
    match namespace {
        Some(ns) if resource.namespaced() => format!("{PREFIX}{}/{ns}/", resource.plural),
        _ => format!("{PREFIX}{}/", resource.plural),
    }
}

/// The key of an allocation claim, e.g. `/registry/claims/clusterip/10.96.0.10`.
pub fn claim_key(kind: &str, value: &str) -> String {
    format!("{PREFIX}claims/{kind}/{value}")
}

/// An object read from etcd, with its `resourceVersion` injected.
#[derive(Debug, Clone)]
pub struct Stored {
    pub value: Value,
    pub mod_revision: i64,
}

/// Whether `key` is one of the apiserver's own bookkeeping keys under the prefix (the
/// tick key, `/registry/~…`), which hold no object.
fn is_internal(key: &[u8]) -> bool {
    key.strip_prefix(PREFIX.as_bytes())
        .is_some_and(|rest| rest.starts_with(b"~"))
}

/// Parses a stored value and injects its revision as `resourceVersion`.
pub fn decode(key: &[u8], value: &[u8], mod_revision: i64) -> Result<Value> {
    let mut obj: Value = serde_json::from_slice(value).map_err(|source| Error::Corrupt {
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })?;
    object::set_meta_str(&mut obj, "resourceVersion", Some(&mod_revision.to_string()));
    Ok(obj)
}

/// Serialises an object for storage, without its `resourceVersion`.
pub fn encode(obj: &Value) -> Vec<u8> {
    if object::resource_version(obj).is_none() && obj["metadata"].get("resourceVersion").is_none() {
        return serde_json::to_vec(obj).expect("a JSON value always serialises");
    }
    let mut obj = obj.clone();
    object::metadata_mut(&mut obj).remove("resourceVersion");
    serde_json::to_vec(&obj).expect("a JSON value always serialises")
}

/// Allocation claims an update creates and releases.
#[derive(Debug, Clone, Copy, Default)]
pub struct Claims<'a> {
    pub new: &'a [String],
    pub released: &'a [String],
}

fn put_options(lease: Option<i64>) -> Option<PutOptions> {
    lease.map(|id| PutOptions::new().with_lease(id))
}

/// One page of a list.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<(String, Stored)>,
    /// The revision the page was read at.
    pub revision: i64,
    /// Whether keys remain after the last item.
    pub more: bool,
}

/// The etcd client, cheap to clone.
#[derive(Clone)]
pub struct Storage {
    client: etcd_client::Client,
}

fn is_compacted(err: &etcd_client::Error) -> bool {
    matches!(err, etcd_client::Error::GRpcStatus(s) if s.code() == tonic::Code::OutOfRange)
}

/// A write's error: [`Error::LeaseNotFound`] when etcd no longer knows the lease the
/// write attaches ("etcdserver: requested lease not found", code NotFound).
fn write_error(err: etcd_client::Error) -> Error {
    match &err {
        etcd_client::Error::GRpcStatus(s)
            if s.code() == tonic::Code::NotFound && s.message().contains("lease") =>
        {
            Error::LeaseNotFound
        }
        _ => Error::Etcd(err),
    }
}

impl Storage {
    /// Connects to etcd.
    ///
    /// # Errors
    /// [`Error::Etcd`] when no endpoint answers.
    pub async fn connect(endpoints: &[String]) -> Result<Self> {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(std::time::Duration::from_secs(5))
            .with_timeout(std::time::Duration::from_secs(30));
        let client = etcd_client::Client::connect(endpoints, Some(options)).await?;
        Ok(Storage { client })
    }

    fn kv(&self) -> KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(256 * 1024 * 1024)
    }

    /// The underlying client, for the watch cache.
    pub fn client(&self) -> etcd_client::Client {
        self.client.clone()
    }

    /// Reads one object.
    pub async fn get(&self, key: &str) -> Result<Option<Stored>> {
        let resp = self.kv().get(key, None).await?;
        match resp.kvs().first() {
            Some(kv) => Ok(Some(Stored {
                value: decode(kv.key(), kv.value(), kv.mod_revision())?,
                mod_revision: kv.mod_revision(),
            })),
            None => Ok(None),
        }
    }

    /// The current revision of the whole store.
    pub async fn current_revision(&self) -> Result<i64> {
        let resp = self
            .kv()
            .get(
                format!("{PREFIX}~revision"),
                Some(GetOptions::new().with_count_only()),
            )
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Writes the tick key (see the watch cache) and returns the revision of the write.
    pub async fn tick(&self) -> Result<i64> {
        let resp = self
            .kv()
            .put(format!("{PREFIX}~tick"), Vec::new(), None)
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or_default())
    }

    /// Creates `key` if absent, together with the given claims, attached to `lease` if
    /// given (see [`crate::ttl`]). Returns the revision.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when the key exists, [`Error::ClaimTaken`] when a claim does.
    pub async fn create(
        &self,
        key: &str,
        obj: &Value,
        claims: &[String],
        lease: Option<i64>,
    ) -> Result<i64> {
        let mut compares = vec![Compare::create_revision(key, CompareOp::Equal, 0)];
        let mut ops = vec![TxnOp::put(key, encode(obj), put_options(lease))];
        for claim in claims {
            compares.push(Compare::create_revision(
                claim.as_str(),
                CompareOp::Equal,
                0,
            ));
            ops.push(TxnOp::put(claim.as_str(), key, None));
        }
        let mut failure = vec![TxnOp::get(key, None)];
        failure.extend(claims.iter().map(|c| TxnOp::get(c.as_str(), None)));
        let txn = Txn::new().when(compares).and_then(ops).or_else(failure);
        let resp = self.kv().txn(txn).await.map_err(write_error)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.succeeded() {
            return Ok(revision);
        }
        let found: Vec<bool> = resp
            .op_responses()
            .into_iter()
            .map(|r| matches!(r, TxnOpResponse::Get(g) if !g.kvs().is_empty()))
            .collect();
        if found.first().copied().unwrap_or(false) {
            return Err(Error::AlreadyExists);
        }
        let taken = claims
            .iter()
            .zip(found.iter().skip(1))
            .find(|(_, taken)| **taken)
            .map(|(c, _)| c.clone())
            .unwrap_or_default();
        Err(Error::ClaimTaken(taken))
    }

    /// Replaces `key` if its `mod_revision` is still `expected`, creating `new_claims`
    /// and releasing `released_claims` in the same transaction. The value is attached to
    /// `lease` if given, and to none otherwise. Returns the revision.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`], [`Error::ClaimTaken`].
    pub async fn update(
        &self,
        key: &str,
        obj: &Value,
        expected: i64,
        claims: Claims<'_>,
        lease: Option<i64>,
    ) -> Result<i64> {
        let Claims {
            new: new_claims,
            released: released_claims,
        } = claims;
        let mut compares = vec![Compare::mod_revision(key, CompareOp::Equal, expected)];
        let mut ops = vec![TxnOp::put(key, encode(obj), put_options(lease))];
        for claim in new_claims {
            compares.push(Compare::create_revision(
                claim.as_str(),
                CompareOp::Equal,
                0,
            ));
            ops.push(TxnOp::put(claim.as_str(), key, None));
        }
        ops.extend(
            released_claims
                .iter()
                .map(|c| TxnOp::delete(c.as_str(), None)),
        );
        let txn = Txn::new()
            .when(compares)
            .and_then(ops)
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.kv().txn(txn).await.map_err(write_error)?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.succeeded() {
            return Ok(revision);
        }
        Err(self.why_failed(&resp, expected, new_claims).await)
    }

    /// Deletes `key` if its `mod_revision` is still `expected`, releasing claims.
    ///
    /// # Errors
    /// [`Error::NotFound`], [`Error::Conflict`].
    pub async fn delete(
        &self,
        key: &str,
        expected: i64,
        released_claims: &[String],
    ) -> Result<i64> {
        let mut ops = vec![TxnOp::delete(key, None)];
        ops.extend(
            released_claims
                .iter()
                .map(|c| TxnOp::delete(c.as_str(), None)),
        );
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then(ops)
            .or_else(vec![TxnOp::get(key, None)]);
        let resp = self.kv().txn(txn).await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        if resp.succeeded() {
            return Ok(revision);
        }
        Err(self.why_failed(&resp, expected, &[]).await)
    }

    async fn why_failed(
        &self,
        resp: &etcd_client::TxnResponse,
        expected: i64,
        claims: &[String],
    ) -> Error {
        let stored = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => Some(g.kvs().first().map(|kv| kv.mod_revision())),
            _ => None,
        });
        match stored.flatten() {
            None => Error::NotFound,
            Some(rev) if rev != expected => Error::Conflict { stored: rev },
            Some(_) => {
                for claim in claims {
                    if let Ok(r) = self
                        .kv()
                        .get(claim.as_str(), Some(GetOptions::new().with_count_only()))
                        .await
                    {
                        if r.count() > 0 {
                            return Error::ClaimTaken(claim.clone());
                        }
                    }
                }
                Error::ClaimTaken(String::new())
            }
        }
    }

    /// Reads up to `limit` keys (0 = all) under `prefix`, starting at `start` (inclusive),
    /// at `revision` (0 = the newest).
    ///
    /// # Errors
    /// [`Error::Compacted`] when `revision` is no longer available.
    pub async fn list(
        &self,
        prefix: &str,
        start: Option<&str>,
        revision: i64,
        limit: i64,
    ) -> Result<Page> {
        let end = prefix_end(prefix);
        let mut options = GetOptions::new()
            .with_range(end)
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        if revision > 0 {
            options = options.with_revision(revision);
        }
        if limit > 0 {
            options = options.with_limit(limit);
        }
        let from = start.unwrap_or(prefix);
        let resp = match self.kv().get(from, Some(options)).await {
            Ok(resp) => resp,
            Err(e) if is_compacted(&e) => {
                return Err(Error::Compacted {
                    requested: revision,
                })
            }
            Err(e) => return Err(e.into()),
        };
        let mut items = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            if is_internal(kv.key()) {
                continue;
            }
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let value = decode(kv.key(), kv.value(), kv.mod_revision())?;
            items.push((
                key,
                Stored {
                    value,
                    mod_revision: kv.mod_revision(),
                },
            ));
        }
        Ok(Page {
            items,
            revision: resp.header().map(|h| h.revision()).unwrap_or(revision),
            more: resp.more(),
        })
    }

    /// Compacts etcd's history up to `revision`.
    pub async fn compact(&self, revision: i64) -> Result<()> {
        match self.kv().compact(revision, None).await {
            Ok(_) => Ok(()),
            Err(e) if is_compacted(&e) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// The first key after every key with this prefix.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use rkube_api::resource::find;

    #[test]
    fn keys_follow_the_registry_layout() {
        let pods = find("", "v1", "pods").expect("pods");
        let nodes = find("", "v1", "nodes").expect("nodes");
        assert_eq!(
            key(pods, Some("default"), "web"),
            "/registry/pods/default/web"
        );
        assert_eq!(key(nodes, None, "n1"), "/registry/nodes/n1");
        assert_eq!(key(nodes, Some("ignored"), "n1"), "/registry/nodes/n1");
        assert_eq!(collection_prefix(pods, None), "/registry/pods/");
        assert_eq!(collection_prefix(pods, Some("a")), "/registry/pods/a/");
        assert_eq!(prefix_end("/registry/pods/"), b"/registry/pods0".to_vec());
    }

    #[test]
    fn encode_drops_and_decode_injects_the_revision() {
        let obj = serde_json::json!({"metadata": {"name": "a", "resourceVersion": "7"}});
        let bytes = encode(&obj);
        assert!(!String::from_utf8_lossy(&bytes).contains("resourceVersion"));
        let back = decode(b"k", &bytes, 42).expect("valid json");
        assert_eq!(back["metadata"]["resourceVersion"], "42");
        assert!(decode(b"k", b"{not json", 1).is_err());
    }
}
