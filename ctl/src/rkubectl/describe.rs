//! `rkubectl describe`: a readable page per object — sections for pods, deployments,
//! nodes and services, metadata plus spec/status YAML for other kinds — ending with
//! the object's events (found by `involvedObject.uid`).

use std::fmt::Write as _;

use clap::Args;
use serde_json::Value;

use super::discovery::{self, ApiResource};
use super::printer;
use super::Ctx;

/// Arguments of `describe`.
#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// `TYPE [NAME…]` or `TYPE/NAME…`; without names, every object of the type.
    #[arg(required = true)]
    pub args: Vec<String>,
    /// Label selector for the objects to describe.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    /// Across all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// Runs `describe`.
///
/// # Errors
/// On unknown types and server errors.
pub async fn run(ctx: &Ctx, args: DescribeArgs) -> anyhow::Result<()> {
    let discovery = ctx.discovery().await?;
    let mut first = true;
    for tn in discovery::parse_args(&args.args)? {
        let r = discovery.resolve(&tn.type_arg)?;
        let mut objects = Vec::new();
        if tn.names.is_empty() {
            let ns = (!args.all_namespaces).then_some(ctx.client.namespace.as_str());
            let mut query = Vec::new();
            if let Some(l) = &args.selector {
                query.push(("labelSelector", l.clone()));
            }
            let list = ctx.client.get(&r.collection_path(ns), &query).await?;
            objects.extend(list["items"].as_array().cloned().unwrap_or_default());
        } else {
            for name in &tn.names {
                objects.push(
                    ctx.client
                        .get(&r.object_path(&ctx.client.namespace, name), &[])
                        .await?,
                );
            }
        }
        for o in objects {
            if !first {
                println!("\n");
            }
            first = false;
            print!("{}", describe(ctx, r, &o).await?);
        }
    }
    Ok(())
}

async fn describe(ctx: &Ctx, r: &ApiResource, o: &Value) -> anyhow::Result<String> {
    let mut out = String::new();
    header(&mut out, r, o);
    match r.kind.as_str() {
        "Pod" => pod(&mut out, o),
        "Deployment" => deployment(&mut out, o),
        "Service" => service(&mut out, o),
        "Node" => node(ctx, &mut out, o).await?,
        _ => {
            for section in ["spec", "status", "data"] {
                if let Some(v) = o.get(section).filter(|v| !v.is_null()) {
                    let _ = writeln!(out, "{}:", capitalize(section));
                    out.push_str(&indent(&yaml(v), 2));
                }
            }
        }
    }
    events(ctx, &mut out, o).await?;
    Ok(out)
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
        .unwrap_or_default()
}

fn yaml(v: &Value) -> String {
    serde_yaml::to_string(v).expect("a JSON value always serializes")
}

fn indent(text: &str, n: usize) -> String {
    text.lines()
        .map(|l| format!("{}{l}\n", " ".repeat(n)))
        .collect()
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "<none>".into(),
        Value::String(s) if s.is_empty() => "<none>".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn field(out: &mut String, name: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "{:<20}{value}", format!("{name}:"));
}

/// `key=value` lines for a map, the first after the field name, the rest aligned.
fn map_field(out: &mut String, name: &str, map: &Value) {
    let mut pairs: Vec<String> = map
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    pairs.sort();
    if pairs.is_empty() {
        field(out, name, "<none>");
        return;
    }
    for (i, p) in pairs.iter().enumerate() {
        if i == 0 {
            field(out, name, p);
        } else {
            let _ = writeln!(out, "{:<20}{p}", "");
        }
    }
}

fn header(out: &mut String, r: &ApiResource, o: &Value) {
    let m = &o["metadata"];
    field(out, "Name", s(&m["name"]));
    if r.namespaced {
        field(out, "Namespace", s(&m["namespace"]));
    }
    map_field(out, "Labels", &m["labels"]);
    map_field(out, "Annotations", &m["annotations"]);
    field(out, "CreationTimestamp", s(&m["creationTimestamp"]));
    if let Some(owner) = m["ownerReferences"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|o| o["controller"] == true)
    {
        field(
            out,
            "Controlled By",
            format!("{}/{}", s(&owner["kind"]), s(&owner["name"])),
        );
    }
}

fn conditions(out: &mut String, o: &Value, columns: &[(&str, &str)]) {
    let Some(list) = o["status"]["conditions"]
        .as_array()
        .filter(|c| !c.is_empty())
    else {
        return;
    };
    let _ = writeln!(out, "Conditions:");
    let mut rows = vec![columns.iter().map(|(h, _)| h.to_string()).collect()];
    rows.push(
        columns
            .iter()
            .map(|(h, _)| "-".repeat(h.len()))
            .collect::<Vec<_>>(),
    );
    for c in list {
        rows.push(columns.iter().map(|(_, k)| s(&c[*k])).collect());
    }
    out.push_str(&indent(&printer::columns(&rows), 2));
}

fn containers(out: &mut String, spec: &Value, statuses: &Value) {
    let _ = writeln!(out, "Containers:");
    for c in spec["containers"].as_array().into_iter().flatten() {
        let name = c["name"].as_str().unwrap_or_default();
        let _ = writeln!(out, "  {name}:");
        let mut inner = String::new();
        field(&mut inner, "Image", s(&c["image"]));
        let ports: Vec<String> = c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{}/{}",
                    s(&p["containerPort"]),
                    p["protocol"].as_str().unwrap_or("TCP")
                )
            })
            .collect();
        field(
            &mut inner,
            "Port",
            if ports.is_empty() {
                "<none>".into()
            } else {
                ports.join(", ")
            },
        );
        if let Some(cs) = statuses
            .as_array()
            .into_iter()
            .flatten()
            .find(|cs| cs["name"].as_str() == Some(name))
        {
            let state = cs["state"].as_object().and_then(|m| m.iter().next());
            if let Some((kind, detail)) = state {
                field(&mut inner, "State", capitalize(kind));
                if let Some(reason) = detail["reason"].as_str() {
                    field(&mut inner, "  Reason", reason);
                }
                if let Some(msg) = detail["message"].as_str() {
                    field(&mut inner, "  Message", msg);
                }
            }
            field(&mut inner, "Ready", s(&cs["ready"]));
            field(&mut inner, "Restart Count", s(&cs["restartCount"]));
        }
        for (title, key) in [("Requests", "requests"), ("Limits", "limits")] {
            if let Some(m) = c["resources"][key].as_object().filter(|m| !m.is_empty()) {
                let _ = writeln!(inner, "{title}:");
                for (k, v) in m {
                    let _ = writeln!(inner, "  {:<18}{}", format!("{k}:"), s(v));
                }
            }
        }
        out.push_str(&indent(&inner, 4));
    }
}

fn pod(out: &mut String, o: &Value) {
    field(out, "Node", s(&o["spec"]["nodeName"]));
    field(out, "Status", s(&o["status"]["phase"]));
    field(out, "IP", s(&o["status"]["podIP"]));
    containers(out, &o["spec"], &o["status"]["containerStatuses"]);
    conditions(
        out,
        o,
        &[
            ("Type", "type"),
            ("Status", "status"),
            ("Reason", "reason"),
            ("Message", "message"),
        ],
    );
}

fn deployment(out: &mut String, o: &Value) {
    let spec = &o["spec"];
    let st = &o["status"];
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let mut sel: Vec<String> = spec["selector"]["matchLabels"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
        .collect();
    sel.sort();
    field(out, "Selector", sel.join(","));
    field(
        out,
        "Replicas",
        format!(
            "{} desired | {} updated | {} total | {} available | {} unavailable",
            spec["replicas"].as_i64().unwrap_or(1),
            n(&st["updatedReplicas"]),
            n(&st["replicas"]),
            n(&st["availableReplicas"]),
            n(&st["unavailableReplicas"])
        ),
    );
    field(
        out,
        "StrategyType",
        spec["strategy"]["type"].as_str().unwrap_or("RollingUpdate"),
    );
    if spec["paused"] == true {
        field(out, "Paused", "true");
    }
    let _ = writeln!(out, "Pod Template:");
    let mut inner = String::new();
    map_field(
        &mut inner,
        "Labels",
        &spec["template"]["metadata"]["labels"],
    );
    containers(&mut inner, &spec["template"]["spec"], &Value::Null);
    out.push_str(&indent(&inner, 2));
    conditions(
        out,
        o,
        &[("Type", "type"), ("Status", "status"), ("Reason", "reason")],
    );
}

fn service(out: &mut String, o: &Value) {
    let spec = &o["spec"];
    map_field(out, "Selector", &spec["selector"]);
    field(out, "Type", spec["type"].as_str().unwrap_or("ClusterIP"));
    field(out, "IP", s(&spec["clusterIP"]));
    for p in spec["ports"].as_array().into_iter().flatten() {
        let name = p["name"].as_str().unwrap_or("<unset>");
        let proto = p["protocol"].as_str().unwrap_or("TCP");
        field(out, "Port", format!("{name}  {}/{proto}", s(&p["port"])));
        field(
            out,
            "TargetPort",
            format!("{}/{proto}", s(&p["targetPort"])),
        );
        if let Some(np) = p["nodePort"].as_i64() {
            field(out, "NodePort", format!("{name}  {np}/{proto}"));
        }
    }
}

async fn node(ctx: &Ctx, out: &mut String, o: &Value) -> anyhow::Result<()> {
    field(out, "Unschedulable", o["spec"]["unschedulable"] == true);
    conditions(
        out,
        o,
        &[
            ("Type", "type"),
            ("Status", "status"),
            ("Reason", "reason"),
            ("Message", "message"),
        ],
    );
    let _ = writeln!(out, "Addresses:");
    for a in o["status"]["addresses"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "  {:<18}{}",
            format!("{}:", s(&a["type"])),
            s(&a["address"])
        );
    }
    for (title, key) in [("Capacity", "capacity"), ("Allocatable", "allocatable")] {
        let _ = writeln!(out, "{title}:");
        for (k, v) in o["status"][key].as_object().into_iter().flatten() {
            let _ = writeln!(out, "  {:<18}{}", format!("{k}:"), s(v));
        }
    }
    let name = o["metadata"]["name"].as_str().unwrap_or_default();
    let pods = ctx
        .client
        .get(
            "/api/v1/pods",
            &[("fieldSelector", format!("spec.nodeName={name}"))],
        )
        .await?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(out, "Non-terminated Pods:  ({} in total)", items.len());
    if !items.is_empty() {
        let mut rows = vec![
            vec!["Namespace".to_string(), "Name".to_string()],
            vec!["---------".to_string(), "----".to_string()],
        ];
        for p in &items {
            rows.push(vec![
                s(&p["metadata"]["namespace"]),
                s(&p["metadata"]["name"]),
            ]);
        }
        out.push_str(&indent(&printer::columns(&rows), 2));
    }
    Ok(())
}

/// A short age like kubectl's (`45s`, `3m`, `5h`, `2d`) since an RFC 3339 time.
pub fn age(since: &str) -> String {
    let Ok(t) = since.parse::<jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 3600 * 2 => format!("{}m", s / 60),
        s if s < 86400 * 2 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

async fn events(ctx: &Ctx, out: &mut String, o: &Value) -> anyhow::Result<()> {
    let Some(uid) = o["metadata"]["uid"].as_str() else {
        return Ok(());
    };
    let list = ctx
        .client
        .get(
            "/api/v1/events",
            &[("fieldSelector", format!("involvedObject.uid={uid}"))],
        )
        .await?;
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if items.is_empty() {
        let _ = writeln!(out, "Events:              <none>");
        return Ok(());
    }
    let _ = writeln!(out, "Events:");
    let mut rows = vec![
        ["Type", "Reason", "Age", "From", "Message"]
            .map(String::from)
            .to_vec(),
        ["----", "------", "----", "----", "-------"]
            .map(String::from)
            .to_vec(),
    ];
    for e in &items {
        let when = e["lastTimestamp"]
            .as_str()
            .or(e["eventTime"].as_str())
            .or(e["firstTimestamp"].as_str())
            .or(e["metadata"]["creationTimestamp"].as_str())
            .unwrap_or_default();
        let from = e["source"]["component"]
            .as_str()
            .or(e["reportingComponent"].as_str())
            .unwrap_or_default();
        rows.push(vec![
            s(&e["type"]),
            s(&e["reason"]),
            age(when),
            from.to_string(),
            s(&e["message"]),
        ]);
    }
    out.push_str(&indent(&printer::columns(&rows), 2));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_fields() {
        let now = jiff::Timestamp::now();
        let ago = |s: i64| (now - jiff::SignedDuration::from_secs(s)).to_string();
        for (secs, want) in [(5, "5s"), (300, "5m"), (3 * 3600, "3h"), (3 * 86400, "3d")] {
            assert_eq!(age(&ago(secs)), want, "{secs}");
        }
        assert_eq!(age("garbage"), "<unknown>");
        let mut out = String::new();
        map_field(&mut out, "Labels", &serde_json::json!({"b": "2", "a": "1"}));
        assert_eq!(out, "Labels:             a=1\n                    b=2\n");
    }
}
