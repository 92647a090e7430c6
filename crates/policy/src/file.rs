//! Policy files in the CiliumNetworkPolicy shape (JSON or YAML): strict parsing into raw
//! structures (unknown fields refused, with their path), then validation into the model.
//!
//! Accepted top-level shapes:
//! * a `cilium.io/v2` `CiliumNetworkPolicy` object (`apiVersion`, `kind`, `metadata.name`,
//!   optional `metadata.namespace` = tenant VNID in decimal, `spec` and/or `specs`);
//! * a bare list of specs (the `cilium policy import` form, the paper's Listing 10), named
//!   after the file;
//! * in YAML, several documents separated by `---`, each one of the above.
//!
//! Nothing of a file is returned unless all of it is valid.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use ila::Vnid;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::PolicyFileError;
use crate::labels::{self, RESERVED_PREFIX, TENANT_LABEL};
use crate::limits::{
    check_shape, too_deep, too_many, yaml_flow_prescan, MAX_CIDRS_PER_RULE, MAX_FILE_BYTES,
    MAX_LABELS_PER_SELECTOR, MAX_NODES, MAX_POLICIES_PER_FILE, MAX_PORTS_PER_RULE,
    MAX_RULES_PER_POLICY, MAX_SELECTORS_PER_RULE, MAX_SPECS_PER_POLICY, MAX_VALUES_PER_EXPRESSION,
};
use crate::model::{Cidr, CidrRule, Entity, Peers, Policy, PolicySpec, PortRule, Protocol, Rule};
use crate::selector::{Operator, Requirement, Selector};

/// Largest port range (`endPort - port + 1`) a rule may have, since ranges are expanded into
/// one map entry per port. The full range 1-65535 is accepted and means "every port".
pub const MAX_PORT_RANGE: u32 = 4096;

/// Encoding of a policy file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// JSON.
    Json,
    /// YAML (one or several documents).
    Yaml,
}

impl FileFormat {
    /// Picks the format from the file name (`.json`, `.yaml`, `.yml`), else from the content
    /// (JSON if it starts with `{` or `[`).
    pub fn detect(file_name: &str, bytes: &[u8]) -> FileFormat {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".json") {
            return FileFormat::Json;
        }
        if lower.ends_with(".yaml") || lower.ends_with(".yml") {
            return FileFormat::Yaml;
        }
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') | Some(b'[') => FileFormat::Json,
            _ => FileFormat::Yaml,
        }
    }
}

/// Parses and validates a whole policy file. `file_name` is used in error messages, to pick
/// the format ([`FileFormat::detect`]) and to name bare lists of specs; `default_tenant` is the
/// tenant of policies without `metadata.namespace`.
///
/// Either every policy of the file is returned, or an error naming the file, the document and
/// the path of the first offending field.
pub fn parse_policy_file(
    file_name: &str,
    bytes: &[u8],
    default_tenant: Vnid,
) -> Result<Vec<Policy>, PolicyFileError> {
    let format = FileFormat::detect(file_name, bytes);
    let err = |document: Option<usize>, path: String, message: String| PolicyFileError {
        file: file_name.to_string(),
        document,
        path,
        message,
    };
    if bytes.len() > MAX_FILE_BYTES {
        return Err(err(
            None,
            String::new(),
            format!(
                "the file is {} bytes; at most {MAX_FILE_BYTES} are allowed (limit MAX_FILE_BYTES)",
                bytes.len()
            ),
        ));
    }
    // Shape pass first (depth and value count, nothing kept), then the typed pass.
    let nodes = Cell::new(0);
    let mut docs: Vec<RawTop> = Vec::new();
    match format {
        FileFormat::Json => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let mut track = serde_path_to_error::Track::new();
            let shape = check_shape(
                serde_path_to_error::Deserializer::new(&mut de, &mut track),
                &nodes,
            );
            if let Err(e) = shape {
                return Err(err(None, clean_path(&track.path()), e.to_string()));
            }
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let top: RawTop = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| err(None, clean_path(e.path()), e.inner().to_string()))?;
            de.end()
                .map_err(|e| err(None, String::new(), e.to_string()))?;
            docs.push(top);
        }
        FileFormat::Yaml => {
            let multi = yaml_has_separator(bytes);
            if let Err(at) = yaml_flow_prescan(bytes) {
                return Err(err(
                    None,
                    String::new(),
                    format!(
                        "line {} column {}: flow collections ([ or {{) {}",
                        at.line,
                        at.column,
                        too_deep()
                    ),
                ));
            }
            let yaml_err = |i: usize, path: String, msg: String| {
                // serde_norway already prefixes its message with the path.
                let msg = match msg.strip_prefix(&format!("{path}: ")) {
                    Some(rest) if !path.is_empty() => rest.to_string(),
                    _ => msg,
                };
                let msg = if msg.contains("repetition limit exceeded") {
                    format!(
                        "{msg}: YAML aliases expand to too many values (at most {MAX_NODES} values \
                         are allowed with aliases expanded, limit MAX_NODES)"
                    )
                } else {
                    msg
                };
                err((multi || i > 0).then_some(i), path, msg)
            };
            // Do not collect the iterators: after a syntax error they may not end.
            for (i, doc) in serde_norway::Deserializer::from_slice(bytes).enumerate() {
                if i >= MAX_POLICIES_PER_FILE {
                    return Err(err(
                        Some(i),
                        String::new(),
                        too_many(
                            "documents or more in the file",
                            i + 1,
                            MAX_POLICIES_PER_FILE,
                            "MAX_POLICIES_PER_FILE",
                        ),
                    ));
                }
                let mut track = serde_path_to_error::Track::new();
                let shape = check_shape(
                    serde_path_to_error::Deserializer::new(doc, &mut track),
                    &nodes,
                );
                if let Err(e) = shape {
                    return Err(yaml_err(i, clean_path(&track.path()), e.to_string()));
                }
            }
            for (i, doc) in serde_norway::Deserializer::from_slice(bytes).enumerate() {
                let top: RawTop = serde_path_to_error::deserialize(doc)
                    .map_err(|e| yaml_err(i, clean_path(e.path()), e.inner().to_string()))?;
                docs.push(top);
            }
        }
    }
    let multi = docs.len() > 1;
    let base_name = bare_name(file_name);
    let mut out = Vec::new();
    let mut names = BTreeSet::new();
    for (i, top) in docs.into_iter().enumerate() {
        let doc_idx = multi.then_some(i);
        let policy = match top {
            RawTop::Empty => continue,
            RawTop::List(specs) => {
                if specs.len() > MAX_SPECS_PER_POLICY {
                    return Err(err(
                        doc_idx,
                        String::new(),
                        too_many(
                            "specs in the policy",
                            specs.len(),
                            MAX_SPECS_PER_POLICY,
                            "MAX_SPECS_PER_POLICY",
                        ),
                    ));
                }
                let mut rules = 0;
                let name = if multi {
                    format!("{base_name}-{}", i + 1)
                } else {
                    base_name.clone()
                };
                let specs = specs
                    .iter()
                    .enumerate()
                    .map(|(j, s)| spec(s, &format!("[{j}]"), &mut rules))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|(p, m)| err(doc_idx, p, m))?;
                Policy {
                    name,
                    tenant: default_tenant,
                    specs,
                }
            }
            RawTop::Doc(d) => document(&d, default_tenant).map_err(|(p, m)| err(doc_idx, p, m))?,
        };
        if policy.specs.is_empty() {
            return Err(err(doc_idx, String::new(), "the policy has no spec".into()));
        }
        if !names.insert(policy.name.clone()) {
            return Err(err(
                doc_idx,
                "metadata.name".into(),
                format!("policy name `{}` is used twice in this file", policy.name),
            ));
        }
        out.push(policy);
    }
    if out.is_empty() {
        return Err(err(None, String::new(), "the file holds no policy".into()));
    }
    Ok(out)
}

/// Whether a YAML text has a `---` document separator after some content (a hint for error
/// messages: name the document only in multi-document files).
fn yaml_has_separator(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    let mut content = false;
    for line in text.lines() {
        let l = line.trim_end();
        if l.starts_with("---") && content {
            return true;
        }
        if !l.is_empty() && !l.starts_with('#') && !l.starts_with("---") && !l.starts_with('%') {
            content = true;
        }
    }
    false
}

/// serde_path_to_error prints `.` for the root; we print nothing.
fn clean_path(p: &serde_path_to_error::Path) -> String {
    let s = p.to_string();
    if s == "." {
        String::new()
    } else {
        s
    }
}

fn bare_name(file_name: &str) -> String {
    let base = file_name.rsplit(['/', '\\']).next().unwrap_or(file_name);
    let stem = match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    };
    if stem.is_empty() {
        "policy".to_string()
    } else {
        stem.to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Raw (serde) structures.

/// A scalar that may be written as a string or a number (ports, label values).
#[derive(Debug, Clone)]
enum Scalar {
    Str(String),
    Int(i128),
    Other(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Str(s) | Scalar::Other(s) => f.write_str(s),
            Scalar::Int(i) => write!(f, "{i}"),
        }
    }
}

impl<'de> Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string or a number")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar::Str(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Scalar, E> {
                Ok(Scalar::Int(v.into()))
            }
            fn visit_i128<E: de::Error>(self, v: i128) -> Result<Scalar, E> {
                Ok(Scalar::Int(v))
            }
            fn visit_u128<E: de::Error>(self, v: u128) -> Result<Scalar, E> {
                Ok(Scalar::Int(i128::try_from(v).unwrap_or(i128::MAX)))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Scalar, E> {
                Ok(Scalar::Other(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar {
    /// The text of a label value (numbers and booleans in their usual spelling).
    fn text(&self) -> String {
        self.to_string()
    }
}

enum RawTop {
    Empty,
    List(Vec<RawSpec>),
    Doc(Box<RawDoc>),
}

#[derive(Default)]
struct RawDoc {
    api_version: Option<String>,
    kind: Option<String>,
    metadata: Option<RawMetadata>,
    spec: Option<RawSpec>,
    specs: Option<Vec<RawSpec>>,
}

const DOC_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "specs", "status"];

impl<'de> Deserialize<'de> for RawTop {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTop;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a CiliumNetworkPolicy object or a list of policy specs")
            }
            fn visit_unit<E: de::Error>(self) -> Result<RawTop, E> {
                Ok(RawTop::Empty)
            }
            fn visit_none<E: de::Error>(self) -> Result<RawTop, E> {
                Ok(RawTop::Empty)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawTop, A::Error> {
                let mut specs = Vec::new();
                while let Some(s) = seq.next_element::<RawSpec>()? {
                    specs.push(s);
                }
                Ok(RawTop::List(specs))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTop, A::Error> {
                let mut doc = RawDoc::default();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "apiVersion" => doc.api_version = Some(map.next_value()?),
                        "kind" => doc.kind = Some(map.next_value()?),
                        "metadata" => doc.metadata = Some(map.next_value()?),
                        "spec" => doc.spec = Some(map.next_value()?),
                        "specs" => doc.specs = Some(map.next_value()?),
                        // Written by the cluster, not by users: accepted and ignored.
                        "status" => {
                            map.next_value::<IgnoredAny>()?;
                        }
                        // Fail inside the value so that the path names the field.
                        other => return map.next_value_seed(Reject(other.to_string())),
                    }
                }
                Ok(RawTop::Doc(Box::new(doc)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Fails with "unknown field" for the given key when asked for its value.
struct Reject(String);

impl<'de> de::DeserializeSeed<'de> for Reject {
    type Value = RawTop;
    fn deserialize<D: Deserializer<'de>>(self, _d: D) -> Result<RawTop, D::Error> {
        Err(de::Error::unknown_field(&self.0, DOC_FIELDS))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetadata {
    name: String,
    namespace: Option<Scalar>,
    #[allow(dead_code)]
    labels: Option<BTreeMap<String, Scalar>>,
    #[allow(dead_code)]
    annotations: Option<BTreeMap<String, Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSpec {
    endpoint_selector: Option<RawSelector>,
    node_selector: Option<IgnoredAny>,
    ingress: Option<Vec<RawIngress>>,
    ingress_deny: Option<Vec<RawIngress>>,
    egress: Option<Vec<RawEgress>>,
    egress_deny: Option<Vec<RawEgress>>,
    enable_default_deny: Option<RawDefaultDeny>,
    description: Option<String>,
    /// Rule labels: metadata only, accepted and ignored.
    #[allow(dead_code)]
    labels: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawSelector {
    match_labels: Option<BTreeMap<String, Scalar>>,
    match_expressions: Option<Vec<RawRequirement>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequirement {
    key: String,
    operator: String,
    values: Option<Vec<Scalar>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIngress {
    from_endpoints: Option<Vec<RawSelector>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<RawCidrSet>>,
    from_entities: Option<Vec<String>>,
    to_ports: Option<Vec<RawPortRule>>,
    from_requires: Option<IgnoredAny>,
    from_groups: Option<IgnoredAny>,
    from_nodes: Option<IgnoredAny>,
    icmps: Option<IgnoredAny>,
    authentication: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawEgress {
    to_endpoints: Option<Vec<RawSelector>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<RawCidrSet>>,
    to_entities: Option<Vec<String>>,
    to_ports: Option<Vec<RawPortRule>>,
    to_requires: Option<IgnoredAny>,
    to_groups: Option<IgnoredAny>,
    to_nodes: Option<IgnoredAny>,
    to_services: Option<IgnoredAny>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<IgnoredAny>,
    icmps: Option<IgnoredAny>,
    authentication: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCidrSet {
    cidr: Option<String>,
    except: Option<Vec<String>>,
    cidr_group_ref: Option<IgnoredAny>,
    cidr_group_selector: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPortRule {
    ports: Option<Vec<RawPort>>,
    rules: Option<IgnoredAny>,
    server_names: Option<IgnoredAny>,
    listener: Option<IgnoredAny>,
    #[serde(rename = "originatingTLS")]
    originating_tls: Option<IgnoredAny>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Option<IgnoredAny>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPort {
    port: Option<Scalar>,
    end_port: Option<Scalar>,
    protocol: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// Validation into the model. Errors are (path, message).

type VResult<T> = Result<T, (String, String)>;

fn fail<T>(path: impl Into<String>, msg: impl Into<String>) -> VResult<T> {
    Err((path.into(), msg.into()))
}

fn refuse(path: String, present: bool, msg: &str) -> VResult<()> {
    if present {
        fail(path, msg)
    } else {
        Ok(())
    }
}

fn document(d: &RawDoc, default_tenant: Vnid) -> VResult<Policy> {
    match d.api_version.as_deref() {
        None => return fail("apiVersion", "missing (expected cilium.io/v2)"),
        Some("cilium.io/v2") => {}
        Some(v) => {
            return fail(
                "apiVersion",
                format!("`{v}` is not supported (expected cilium.io/v2)"),
            )
        }
    }
    match d.kind.as_deref() {
        None => return fail("kind", "missing (expected CiliumNetworkPolicy)"),
        Some("CiliumNetworkPolicy") => {}
        Some("CiliumClusterwideNetworkPolicy") => return fail(
            "kind",
            "CiliumClusterwideNetworkPolicy is not supported: every policy belongs to one tenant",
        ),
        Some(k) => {
            return fail(
                "kind",
                format!("`{k}` is not supported (expected CiliumNetworkPolicy)"),
            )
        }
    }
    let Some(meta) = &d.metadata else {
        return fail("metadata", "missing (metadata.name is required)");
    };
    let name = meta.name.trim();
    if name.is_empty()
        || name.len() > 253
        || name.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return fail(
            "metadata.name",
            format!(
                "`{}` is not a policy name (1-253 characters, no spaces)",
                meta.name
            ),
        );
    }
    let tenant = match &meta.namespace {
        None => default_tenant,
        Some(ns) => labels::parse_tenant(&ns.text()).map_err(|_| {
            (
                "metadata.namespace".to_string(),
                format!("`{ns}` is not a tenant VNID (decimal, below 2^28)"),
            )
        })?,
    };
    let mut specs = Vec::new();
    let mut rules = 0;
    if let Some(s) = &d.spec {
        specs.push(spec(s, "spec", &mut rules)?);
    }
    if let Some(list) = &d.specs {
        let n = list.len() + specs.len();
        if n > MAX_SPECS_PER_POLICY {
            return fail(
                "specs",
                too_many(
                    "specs in the policy",
                    n,
                    MAX_SPECS_PER_POLICY,
                    "MAX_SPECS_PER_POLICY",
                ),
            );
        }
        for (i, s) in list.iter().enumerate() {
            specs.push(spec(s, &format!("specs[{i}]"), &mut rules)?);
        }
    }
    if specs.is_empty() {
        return fail("spec", "missing (a policy needs spec or specs)");
    }
    Ok(Policy {
        name: name.to_string(),
        tenant,
        specs,
    })
}

/// Validates one spec; `rules` counts the rules of the policy so far.
fn spec(s: &RawSpec, path: &str, rules: &mut usize) -> VResult<PolicySpec> {
    refuse(
        format!("{path}.nodeSelector"),
        s.node_selector.is_some(),
        "nodeSelector (host policies) is not supported; policies select endpoints",
    )?;
    let Some(sel) = &s.endpoint_selector else {
        return fail(
            format!("{path}.endpointSelector"),
            "missing (every spec needs an endpointSelector)",
        );
    };
    let endpoint_selector = selector(sel, &format!("{path}.endpointSelector"))?;
    let mut out = PolicySpec {
        endpoint_selector,
        default_deny_ingress: true,
        default_deny_egress: true,
        description: s.description.clone(),
        ..PolicySpec::default()
    };
    if let Some(dd) = &s.enable_default_deny {
        out.default_deny_ingress = dd.ingress.unwrap_or(true);
        out.default_deny_egress = dd.egress.unwrap_or(true);
    }
    for (field, list, dst) in [
        ("ingress", &s.ingress, &mut out.ingress),
        ("ingressDeny", &s.ingress_deny, &mut out.ingress_deny),
    ] {
        count_rules(
            rules,
            list.as_ref().map_or(0, Vec::len),
            &format!("{path}.{field}"),
        )?;
        for (i, r) in list.iter().flatten().enumerate() {
            dst.push(ingress_rule(r, &format!("{path}.{field}[{i}]"))?);
        }
    }
    for (field, list, dst) in [
        ("egress", &s.egress, &mut out.egress),
        ("egressDeny", &s.egress_deny, &mut out.egress_deny),
    ] {
        count_rules(
            rules,
            list.as_ref().map_or(0, Vec::len),
            &format!("{path}.{field}"),
        )?;
        for (i, r) in list.iter().flatten().enumerate() {
            dst.push(egress_rule(r, &format!("{path}.{field}[{i}]"))?);
        }
    }
    Ok(out)
}

fn count_rules(rules: &mut usize, n: usize, path: &str) -> VResult<()> {
    *rules += n;
    if *rules > MAX_RULES_PER_POLICY {
        return fail(
            path,
            too_many(
                "rules or more in the policy",
                *rules,
                MAX_RULES_PER_POLICY,
                "MAX_RULES_PER_POLICY",
            ),
        );
    }
    Ok(())
}

fn ingress_rule(r: &RawIngress, path: &str) -> VResult<Rule> {
    refuse(
        format!("{path}.fromRequires"),
        r.from_requires.is_some(),
        "fromRequires is not supported (use matchExpressions in fromEndpoints)",
    )?;
    refuse(
        format!("{path}.fromGroups"),
        r.from_groups.is_some(),
        "fromGroups (cloud provider groups) is not supported",
    )?;
    refuse(
        format!("{path}.fromNodes"),
        r.from_nodes.is_some(),
        "fromNodes is not supported",
    )?;
    common_refusals(path, r.icmps.is_some(), r.authentication.is_some())?;
    rule(
        path,
        PeerFields {
            endpoints: (&r.from_endpoints, "fromEndpoints"),
            cidr: (&r.from_cidr, "fromCIDR"),
            cidr_set: (&r.from_cidr_set, "fromCIDRSet"),
            entities: (&r.from_entities, "fromEntities"),
        },
        &r.to_ports,
    )
}

fn egress_rule(r: &RawEgress, path: &str) -> VResult<Rule> {
    refuse(
        format!("{path}.toRequires"),
        r.to_requires.is_some(),
        "toRequires is not supported (use matchExpressions in toEndpoints)",
    )?;
    refuse(
        format!("{path}.toGroups"),
        r.to_groups.is_some(),
        "toGroups (cloud provider groups) is not supported",
    )?;
    refuse(
        format!("{path}.toNodes"),
        r.to_nodes.is_some(),
        "toNodes is not supported",
    )?;
    refuse(
        format!("{path}.toServices"),
        r.to_services.is_some(),
        "toServices is not supported (ilanet has no service load balancing; select the endpoints)",
    )?;
    refuse(
        format!("{path}.toFQDNs"),
        r.to_fqdns.is_some(),
        "toFQDNs (DNS-based policy) is not supported; use toCIDR",
    )?;
    common_refusals(path, r.icmps.is_some(), r.authentication.is_some())?;
    rule(
        path,
        PeerFields {
            endpoints: (&r.to_endpoints, "toEndpoints"),
            cidr: (&r.to_cidr, "toCIDR"),
            cidr_set: (&r.to_cidr_set, "toCIDRSet"),
            entities: (&r.to_entities, "toEntities"),
        },
        &r.to_ports,
    )
}

fn common_refusals(path: &str, icmps: bool, auth: bool) -> VResult<()> {
    refuse(
        format!("{path}.icmps"),
        icmps,
        "ICMP rules (icmps) are not supported; a rule without toPorts covers every protocol, ICMPv6 included",
    )?;
    refuse(
        format!("{path}.authentication"),
        auth,
        "mutual authentication is not supported",
    )
}

struct PeerFields<'a> {
    endpoints: (&'a Option<Vec<RawSelector>>, &'static str),
    cidr: (&'a Option<Vec<String>>, &'static str),
    cidr_set: (&'a Option<Vec<RawCidrSet>>, &'static str),
    entities: (&'a Option<Vec<String>>, &'static str),
}

fn rule(path: &str, f: PeerFields<'_>, to_ports: &Option<Vec<RawPortRule>>) -> VResult<Rule> {
    let mut peers = Peers::default();
    let any_peer_field = f.endpoints.0.is_some()
        || f.cidr.0.is_some()
        || f.cidr_set.0.is_some()
        || f.entities.0.is_some();
    let len = |l: &Option<Vec<_>>| l.as_ref().map_or(0, Vec::len);
    let selectors = len(f.endpoints.0) + f.entities.0.as_ref().map_or(0, Vec::len);
    if selectors > MAX_SELECTORS_PER_RULE {
        let field = if f.endpoints.0.is_some() {
            f.endpoints.1
        } else {
            f.entities.1
        };
        return fail(
            format!("{path}.{field}"),
            too_many(
                "peer selectors and entities in the rule",
                selectors,
                MAX_SELECTORS_PER_RULE,
                "MAX_SELECTORS_PER_RULE",
            ),
        );
    }
    let cidrs = f.cidr.0.as_ref().map_or(0, Vec::len)
        + f.cidr_set
            .0
            .iter()
            .flatten()
            .map(|c| 1 + c.except.as_ref().map_or(0, Vec::len))
            .sum::<usize>();
    if cidrs > MAX_CIDRS_PER_RULE {
        let field = if f.cidr_set.0.is_some() {
            f.cidr_set.1
        } else {
            f.cidr.1
        };
        return fail(
            format!("{path}.{field}"),
            too_many(
                "CIDR prefixes in the rule",
                cidrs,
                MAX_CIDRS_PER_RULE,
                "MAX_CIDRS_PER_RULE",
            ),
        );
    }
    for (i, s) in f.endpoints.0.iter().flatten().enumerate() {
        peers
            .endpoints
            .push(selector(s, &format!("{path}.{}[{i}]", f.endpoints.1))?);
    }
    for (i, c) in f.cidr.0.iter().flatten().enumerate() {
        let cidr = parse_cidr(c, &format!("{path}.{}[{i}]", f.cidr.1))?;
        peers.cidrs.push(CidrRule {
            cidr,
            except: Vec::new(),
        });
    }
    for (i, c) in f.cidr_set.0.iter().flatten().enumerate() {
        let p = format!("{path}.{}[{i}]", f.cidr_set.1);
        refuse(
            format!("{p}.cidrGroupRef"),
            c.cidr_group_ref.is_some(),
            "CIDR groups are not supported",
        )?;
        refuse(
            format!("{p}.cidrGroupSelector"),
            c.cidr_group_selector.is_some(),
            "CIDR groups are not supported",
        )?;
        let Some(text) = &c.cidr else {
            return fail(format!("{p}.cidr"), "missing");
        };
        let cidr = parse_cidr(text, &format!("{p}.cidr"))?;
        let mut except = Vec::new();
        for (j, e) in c.except.iter().flatten().enumerate() {
            let ep = format!("{p}.except[{j}]");
            let ex = parse_cidr(e, &ep)?;
            if !cidr.contains_prefix(ex) {
                return fail(ep, format!("{ex} is not inside {cidr}"));
            }
            except.push(ex);
        }
        peers.cidrs.push(CidrRule { cidr, except });
    }
    for (i, e) in f.entities.0.iter().flatten().enumerate() {
        let p = format!("{path}.{}[{i}]", f.entities.1);
        let ent = match e.as_str() {
            "host" => Entity::Host,
            "world" | "world-ipv6" => Entity::World,
            "all" => Entity::All,
            "world-ipv4" => return fail(p, "world-ipv4 is not supported (ilanet is IPv6-only)"),
            other => {
                return fail(
                    p,
                    format!(
                    "entity `{other}` is not supported (supported: host, world, world-ipv6, all)"
                ),
                )
            }
        };
        peers.entities.insert(ent);
    }
    let mut ports = Vec::new();
    if let Some(list) = to_ports {
        let tp = format!("{path}.toPorts");
        let n = list.len()
            + list
                .iter()
                .map(|p| p.ports.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
        if n > MAX_PORTS_PER_RULE {
            return fail(
                tp,
                too_many(
                    "toPorts items and ports in the rule",
                    n,
                    MAX_PORTS_PER_RULE,
                    "MAX_PORTS_PER_RULE",
                ),
            );
        }
        if list.is_empty() {
            return fail(
                tp,
                "is empty (leave toPorts out to match every port and protocol)",
            );
        }
        for (i, pr) in list.iter().enumerate() {
            let p = format!("{tp}[{i}]");
            refuse(
                format!("{p}.rules"),
                pr.rules.is_some(),
                "L7 rules are not supported (ilanet enforces L3/L4 only)",
            )?;
            refuse(
                format!("{p}.serverNames"),
                pr.server_names.is_some(),
                "serverNames (TLS SNI) is not supported",
            )?;
            refuse(
                format!("{p}.listener"),
                pr.listener.is_some(),
                "listener (L7 proxy) is not supported",
            )?;
            refuse(
                format!("{p}.originatingTLS"),
                pr.originating_tls.is_some(),
                "TLS interception is not supported",
            )?;
            refuse(
                format!("{p}.terminatingTLS"),
                pr.terminating_tls.is_some(),
                "TLS interception is not supported",
            )?;
            let items = pr.ports.as_deref().unwrap_or_default();
            if items.is_empty() {
                return fail(
                    format!("{p}.ports"),
                    "missing or empty (a toPorts item needs ports)",
                );
            }
            for (j, port) in items.iter().enumerate() {
                ports.push(port_rule(port, &format!("{p}.ports[{j}]"))?);
            }
        }
    }
    if !any_peer_field && !ports.is_empty() {
        // Port-only rule: every endpoint of the policy's own tenant (never other tenants, the
        // host or the world: those must be named).
        peers.endpoints.push(Selector::default());
    }
    Ok(Rule { peers, ports })
}

fn port_number(v: &Scalar, path: &str) -> VResult<u16> {
    let n: i128 = match v {
        Scalar::Int(i) => *i,
        Scalar::Str(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
            s.parse::<i128>().unwrap_or(i128::MAX)
        }
        Scalar::Str(s) => {
            return fail(
                path,
                format!("`{s}` is not a port number (named ports are not supported)"),
            )
        }
        Scalar::Other(s) => return fail(path, format!("`{s}` is not a port number")),
    };
    if n == 0 {
        return fail(
            path,
            "0 is not a port (1-65535); leave `port` out to match every port",
        );
    }
    match u16::try_from(n) {
        Ok(p) => Ok(p),
        Err(_) => fail(path, format!("{v} is not a port (1-65535)")),
    }
}

fn port_rule(p: &RawPort, path: &str) -> VResult<PortRule> {
    let protocol = match p
        .protocol
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("ANY") => Protocol::Any,
        Some("TCP") => Protocol::Tcp,
        Some("UDP") => Protocol::Udp,
        Some("SCTP") => Protocol::Sctp,
        Some(_) => {
            return fail(
                format!("{path}.protocol"),
                format!(
                    "`{}` is not a protocol (TCP, UDP, SCTP or ANY)",
                    p.protocol.as_deref().unwrap_or_default()
                ),
            )
        }
    };
    let ports = match (&p.port, &p.end_port) {
        (None, None) => None,
        (None, Some(_)) => return fail(format!("{path}.endPort"), "endPort needs port"),
        (Some(v), None) => {
            let n = port_number(v, &format!("{path}.port"))?;
            Some((n, n))
        }
        (Some(v), Some(e)) => {
            let lo = port_number(v, &format!("{path}.port"))?;
            let hi = port_number(e, &format!("{path}.endPort"))?;
            if hi < lo {
                return fail(
                    format!("{path}.endPort"),
                    format!("{hi} is below port {lo}"),
                );
            }
            if (lo, hi) == (1, u16::MAX) {
                None
            } else {
                let n = u32::from(hi) - u32::from(lo) + 1;
                if n > MAX_PORT_RANGE {
                    return fail(
                        format!("{path}.endPort"),
                        format!(
                            "range {lo}-{hi} has {n} ports; at most {MAX_PORT_RANGE} are allowed (1-65535 or no port means every port)"
                        ),
                    );
                }
                Some((lo, hi))
            }
        }
    };
    Ok(PortRule { protocol, ports })
}

fn parse_cidr(text: &str, path: &str) -> VResult<Cidr> {
    let t = text.trim();
    let (addr, len) = match t.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (t, None),
    };
    if addr.parse::<Ipv4Addr>().is_ok() {
        return fail(
            path,
            format!("IPv4 prefix `{text}` is not supported (ilanet is IPv6-only)"),
        );
    }
    let Ok(a) = addr.parse::<Ipv6Addr>() else {
        return fail(path, format!("`{text}` is not an IPv6 prefix"));
    };
    let len = match len {
        None => 128,
        Some(l) => match l.parse::<u8>() {
            Ok(n) if n <= 128 && !l.starts_with('+') => n,
            _ => return fail(path, format!("`{text}`: prefix length must be 0-128")),
        },
    };
    match Cidr::new(a, len) {
        Some(c) => Ok(c),
        None => {
            let net = Cidr::new(crate::model::mask(a, len), len).unwrap_or(Cidr::ALL);
            fail(
                path,
                format!("`{text}` has host bits set (did you mean {net}?)"),
            )
        }
    }
}

fn label_key(raw: &str, path: &str) -> VResult<String> {
    // Cilium label sources are accepted and dropped: ilanet labels have no source.
    let key = raw
        .strip_prefix("any:")
        .or_else(|| raw.strip_prefix("k8s:"))
        .unwrap_or(raw);
    labels::validate_key(key).map_err(|e| (path.to_string(), e.to_string()))?;
    if key.starts_with(RESERVED_PREFIX) && key != TENANT_LABEL {
        return fail(
            path,
            format!("label key `{key}` is reserved (only {TENANT_LABEL} may be selected)"),
        );
    }
    Ok(key.to_string())
}

fn selector(s: &RawSelector, path: &str) -> VResult<Selector> {
    let mut out = Selector::default();
    let n = s.match_labels.as_ref().map_or(0, BTreeMap::len)
        + s.match_expressions.as_ref().map_or(0, Vec::len);
    if n > MAX_LABELS_PER_SELECTOR {
        return fail(
            path,
            too_many(
                "labels and expressions in the selector",
                n,
                MAX_LABELS_PER_SELECTOR,
                "MAX_LABELS_PER_SELECTOR",
            ),
        );
    }
    for (k, v) in s.match_labels.iter().flatten() {
        let p = format!("{path}.matchLabels.{k}");
        let key = label_key(k, &p)?;
        let value = v.text();
        labels::validate_value(&key, &value).map_err(|e| (p.clone(), e.to_string()))?;
        if out.match_labels.insert(key.clone(), value).is_some() {
            return fail(p, format!("label key `{key}` given twice"));
        }
    }
    for (i, r) in s.match_expressions.iter().flatten().enumerate() {
        let p = format!("{path}.matchExpressions[{i}]");
        let key = label_key(&r.key, &format!("{p}.key"))?;
        let operator = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => {
                return fail(
                    format!("{p}.operator"),
                    format!("`{other}` is not an operator (In, NotIn, Exists, DoesNotExist)"),
                )
            }
        };
        let nv = r.values.as_ref().map_or(0, Vec::len);
        if nv > MAX_VALUES_PER_EXPRESSION {
            return fail(
                format!("{p}.values"),
                too_many(
                    "values",
                    nv,
                    MAX_VALUES_PER_EXPRESSION,
                    "MAX_VALUES_PER_EXPRESSION",
                ),
            );
        }
        let mut values = BTreeSet::new();
        for (j, v) in r.values.iter().flatten().enumerate() {
            let value = v.text();
            labels::validate_value(&key, &value)
                .map_err(|e| (format!("{p}.values[{j}]"), e.to_string()))?;
            values.insert(value);
        }
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return fail(
                    format!("{p}.values"),
                    format!("{} needs at least one value", r.operator),
                )
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return fail(
                    format!("{p}.values"),
                    format!("{} takes no values", r.operator),
                )
            }
            _ => {}
        }
        out.match_expressions.push(Requirement {
            key,
            operator,
            values,
        });
    }
    Ok(out)
}
