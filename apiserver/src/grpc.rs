//! The internal gRPC API (`rkube.v1.Resources`) over the [`Registry`]: what the
//! scheduler, controller-manager and node agents use. Objects travel as the same JSON the
//! REST API serves; errors carry the Kubernetes `Status` as JSON in the details.

use std::pin::Pin;
use std::sync::{Arc, LazyLock};

use futures::Stream;
use serde_json::Value;
use tonic::{Request, Response};

use rkube_api::{resource, selector, status::Status, Resource, Subresource};
use rkube_proto::v1::{
    resources_server::Resources, BindRequest, CreateRequest, DeleteRequest, GetRequest,
    ListRequest, ListResponse, Object, ResourceRef, UpdateRequest, WatchEvent, WatchRequest,
};

use crate::auth::{Authorizer, RequestAttributes, UserInfo};
use crate::registry::{
    DeleteOptions, ListOptions, Preconditions, Registry, WatchItem, WriteOptions,
};

/// The gRPC service.
#[derive(Clone)]
pub struct GrpcApi {
    pub registry: Registry,
    pub authorizer: Arc<dyn Authorizer>,
}

impl GrpcApi {
    /// Looks the request's resource up and asks the authorizer, as REST requests do.
    fn admit<T: Addressed>(
        &self,
        req: &Request<T>,
        verb: &str,
        sub: &str,
    ) -> Result<&'static Resource, tonic::Status> {
        let target = req.get_ref();
        let r = lookup(target.resource_ref())?;
        let anonymous = UserInfo::anonymous();
        let user = req.extensions().get::<UserInfo>().unwrap_or(&anonymous);
        let attrs = RequestAttributes {
            verb: verb.into(),
            group: r.group.into(),
            resource: r.plural.into(),
            subresource: sub.into(),
            namespace: target.namespace().into(),
            name: target.name().into(),
            path: String::new(),
        };
        crate::rest::authorize(self.authorizer.as_ref(), user, &attrs).map_err(grpc_err)?;
        Ok(r)
    }
}

/// A Kubernetes `Status` as a gRPC status, with the Status JSON in the details.
pub fn to_grpc(status: &Status) -> tonic::Status {
    use tonic::Code;
    let code = match (status.code, status.reason.as_str()) {
        (404, _) => Code::NotFound,
        (409, "AlreadyExists") => Code::AlreadyExists,
        (409, _) => Code::Aborted,
        (400 | 422, _) => Code::InvalidArgument,
        (410, _) => Code::OutOfRange,
        (401, _) => Code::Unauthenticated,
        (403, _) => Code::PermissionDenied,
        (413, _) => Code::ResourceExhausted,
        (503, _) => Code::Unavailable,
        (504, _) => Code::DeadlineExceeded,
        _ => Code::Internal,
    };
    let details = serde_json::to_vec(status).expect("a Status always serialises");
    tonic::Status::with_details(code, status.message.clone(), details.into())
}

fn grpc_err(status: Box<Status>) -> tonic::Status {
    to_grpc(&status)
}

fn lookup(r: Option<&ResourceRef>) -> Result<&'static Resource, tonic::Status> {
    let r = r.ok_or_else(|| to_grpc(&Status::bad_request("resource is required")))?;
    resource::find(&r.group, &r.version, &r.resource).ok_or_else(|| {
        to_grpc(&Status::bad_request(format!(
            "the server does not serve resource {}/{}/{}",
            r.group, r.version, r.resource
        )))
    })
}

fn ns(namespace: &str) -> Option<&str> {
    (!namespace.is_empty()).then_some(namespace)
}

fn parse_json(bytes: &[u8]) -> Result<Value, tonic::Status> {
    serde_json::from_slice(bytes).map_err(|e| {
        to_grpc(&Status::bad_request(format!(
            "the object is not valid JSON: {e}"
        )))
    })
}

fn object(value: &Value) -> Object {
    Object {
        json: serde_json::to_vec(value).expect("a JSON value always serialises"),
    }
}

fn list_options(
    r: &'static Resource,
    label: &str,
    field: &str,
    limit: i64,
    cont: &str,
    rv: &str,
) -> Result<ListOptions, tonic::Status> {
    let label_selector = selector::LabelSelector::parse(label)
        .map_err(|e| to_grpc(&Status::bad_request(e.to_string())))?;
    let field_selector = selector::FieldSelector::parse(field)
        .map_err(|e| to_grpc(&Status::bad_request(e.to_string())))?;
    rkube_api::fields::check(r, &field_selector)
        .map_err(|e| to_grpc(&Status::bad_request(e.to_string())))?;
    Ok(ListOptions {
        label_selector,
        field_selector,
        limit,
        continue_token: (!cont.is_empty()).then(|| cont.to_string()),
        resource_version: (!rv.is_empty()).then(|| rv.to_string()),
    })
}

/// What a request names: resource, namespace and object.
trait Addressed {
    fn resource_ref(&self) -> Option<&ResourceRef>;
    fn namespace(&self) -> &str;
    fn name(&self) -> &str {
        ""
    }
}

macro_rules! addressed {
    ($($t:ty => $name:ident),* $(,)?) => {$(
        impl Addressed for $t {
            fn resource_ref(&self) -> Option<&ResourceRef> {
                self.resource.as_ref()
            }
            fn namespace(&self) -> &str {
                &self.namespace
            }
            addressed!(@name $name);
        }
    )*};
    (@name named) => {
        fn name(&self) -> &str {
            &self.name
        }
    };
    (@name collection) => {};
}

addressed!(
    GetRequest => named,
    ListRequest => collection,
    WatchRequest => collection,
    CreateRequest => collection,
    UpdateRequest => named,
    DeleteRequest => named,
);

/// Pod bindings name the pod; the resource is implied.
static PODS: LazyLock<ResourceRef> = LazyLock::new(|| ResourceRef {
    group: String::new(),
    version: "v1".into(),
    resource: "pods".into(),
});

impl Addressed for BindRequest {
    fn resource_ref(&self) -> Option<&ResourceRef> {
        Some(&PODS)
    }
    fn namespace(&self) -> &str {
        &self.namespace
    }
    fn name(&self) -> &str {
        &self.name
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, tonic::Status>> + Send>>;

#[tonic::async_trait]
impl Resources for GrpcApi {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<Object>, tonic::Status> {
        let r = self.admit(&req, "get", "")?;
        let req = req.into_inner();
        let obj = self
            .registry
            .get(r, ns(&req.namespace), &req.name)
            .await
            .map_err(grpc_err)?;
        Ok(Response::new(object(&obj)))
    }

    async fn list(
        &self,
        req: Request<ListRequest>,
    ) -> Result<Response<ListResponse>, tonic::Status> {
        let r = self.admit(&req, "list", "")?;
        let req = req.into_inner();
        let opts = list_options(
            r,
            &req.label_selector,
            &req.field_selector,
            req.limit,
            &req.continue_token,
            &req.resource_version,
        )?;
        let list = self
            .registry
            .list(r, ns(&req.namespace), &opts)
            .await
            .map_err(grpc_err)?;
        Ok(Response::new(ListResponse {
            items: list.items.iter().map(|o| o.json.to_vec()).collect(),
            resource_version: list.resource_version.to_string(),
            continue_token: list.continue_token.unwrap_or_default(),
        }))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, tonic::Status> {
        let r = self.admit(&req, "watch", "")?;
        let req = req.into_inner();
        let opts = list_options(
            r,
            &req.label_selector,
            &req.field_selector,
            0,
            "",
            &req.resource_version,
        )?;
        let every = req
            .allow_bookmarks
            .then_some(std::time::Duration::from_secs(5));
        let watch = match self.registry.watch(r, ns(&req.namespace), &opts).await {
            Ok(w) => w,
            Err(status) if status.code == 410 => {
                let event = WatchEvent {
                    r#type: "ERROR".into(),
                    object: serde_json::to_vec(&*status).expect("a Status always serialises"),
                };
                return Ok(Response::new(Box::pin(futures::stream::iter([Ok(event)]))));
            }
            Err(status) => return Err(grpc_err(status)),
        };
        let stream = futures::stream::unfold(watch, move |mut watch| async move {
            let event = match watch.next(every).await? {
                WatchItem::Event(kind, obj) => WatchEvent {
                    r#type: kind.as_str().into(),
                    object: obj.json.to_vec(),
                },
                WatchItem::Bookmark(rv) => WatchEvent {
                    r#type: "BOOKMARK".into(),
                    object: serde_json::to_vec(&serde_json::json!({
                        "kind": r.kind, "apiVersion": r.api_version(), "metadata": {"resourceVersion": rv.to_string()}
                    }))
                    .expect("a JSON value always serialises"),
                },
            };
            Some((Ok(event), watch))
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn create(&self, req: Request<CreateRequest>) -> Result<Response<Object>, tonic::Status> {
        let r = self.admit(&req, "create", "")?;
        let req = req.into_inner();
        let body = parse_json(&req.object)?;
        let opts = WriteOptions::default();
        let written = self
            .registry
            .create(r, ns(&req.namespace), body, &opts)
            .await
            .map_err(grpc_err)?;
        Ok(Response::new(object(&written.object)))
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Result<Response<Object>, tonic::Status> {
        let r = self.admit(&req, "update", "")?;
        let req = req.into_inner();
        let body = parse_json(&req.object)?;
        let written = self
            .registry
            .update(
                r,
                ns(&req.namespace),
                &req.name,
                body,
                None,
                &WriteOptions::default(),
            )
            .await
            .map_err(grpc_err)?;
        Ok(Response::new(object(&written.object)))
    }

    async fn update_status(
        &self,
        req: Request<UpdateRequest>,
    ) -> Result<Response<Object>, tonic::Status> {
        let r = self.admit(&req, "update", "status")?;
        let req = req.into_inner();
        if !r.has(Subresource::Status) {
            return Err(to_grpc(&Status::path_not_found()));
        }
        let body = parse_json(&req.object)?;
        let written = self
            .registry
            .update(
                r,
                ns(&req.namespace),
                &req.name,
                body,
                Some(Subresource::Status),
                &WriteOptions::default(),
            )
            .await
            .map_err(grpc_err)?;
        Ok(Response::new(object(&written.object)))
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<Object>, tonic::Status> {
        let r = self.admit(&req, "delete", "")?;
        let req = req.into_inner();
        let opts = DeleteOptions {
            grace_period_seconds: req.grace_period_seconds,
            propagation_policy: (!req.propagation_policy.is_empty())
                .then(|| req.propagation_policy.clone()),
            preconditions: Preconditions {
                uid: (!req.precondition_uid.is_empty()).then(|| req.precondition_uid.clone()),
                resource_version: (!req.precondition_resource_version.is_empty())
                    .then(|| req.precondition_resource_version.clone()),
            },
            dry_run: vec![],
        };
        let (obj, _) = self
            .registry
            .delete(r, ns(&req.namespace), &req.name, &opts)
            .await
            .map_err(grpc_err)?;
        Ok(Response::new(object(&obj)))
    }

    async fn bind(&self, req: Request<BindRequest>) -> Result<Response<Object>, tonic::Status> {
        self.admit(&req, "create", "binding")?;
        let req = req.into_inner();
        let binding = parse_json(&req.binding)?;
        let pod = self
            .registry
            .bind(&req.namespace, &req.name, &binding)
            .await
            .map_err(grpc_err)?;
        Ok(Response::new(object(&pod)))
    }
}
