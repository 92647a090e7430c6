//! Resource limits of policy files, enforced by [`crate::parse_policy_file`] before and while
//! parsing, so that every caller (the CLI reading a file, an agent decoding a store record) is
//! bounded alike.
//!
//! Why a pre-scan: libyaml (`unsafe-libyaml-norway`, under `serde_norway`) keeps one "simple
//! key" slot per open flow collection (`[` / `{`) and walks all of them for every token it
//! scans, so YAML parsing time grows with the square of the flow nesting depth (60,000 levels:
//! tens of seconds), before any of our code sees a value. The YAML text is therefore scanned
//! first for its flow nesting ([`yaml_flow_prescan`]), in one linear pass, and refused beyond
//! [`MAX_DEPTH`]. Then a shape pass ([`check_shape`]) walks every document (JSON or YAML) without
//! building anything, refusing nesting beyond [`MAX_DEPTH`] (block and flow alike, `status` and
//! ignored fields included) and more than [`MAX_NODES`] values (YAML aliases are counted every
//! time they are used, which bounds "billion laughs" alias bombs). Only then are the documents
//! deserialized and validated; the element counts (rules, selectors, ports, ...) are checked
//! during validation, with the path of the offending list.

use std::cell::Cell;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Largest policy file, in bytes (16 MiB). A generated policy of 100,000 rules (the eBPF bench's
/// largest) is about 11 MB.
pub const MAX_FILE_BYTES: usize = 16 << 20;

/// Deepest nesting of mappings and sequences in a document, the document itself being level 1.
/// A CiliumNetworkPolicy needs about 8 (`spec.ingress[0].toPorts[0].ports[0]`); ignored fields
/// such as `status`, `spec.labels` or `nodeSelector` are held to the same limit.
pub const MAX_DEPTH: usize = 32;

/// Most values (scalars, mappings, sequences and mapping keys) in a whole file, YAML aliases
/// counted once per use. The 100,000-rule bench policy has about 1.9 million.
pub const MAX_NODES: usize = 1 << 22;

/// Most policies (YAML documents) in one file.
pub const MAX_POLICIES_PER_FILE: usize = 1024;

/// Most specs in one policy (`specs`, or a bare list of specs).
pub const MAX_SPECS_PER_POLICY: usize = 1024;

/// Most rules in one policy: `ingress`, `ingressDeny`, `egress` and `egressDeny` of all its
/// specs together.
pub const MAX_RULES_PER_POLICY: usize = 1 << 17;

/// Most peer selectors and entities in one rule (`fromEndpoints`/`toEndpoints` plus
/// `fromEntities`/`toEntities`).
pub const MAX_SELECTORS_PER_RULE: usize = 1024;

/// Most CIDR peers in one rule: `fromCIDR`/`toCIDR`, `fromCIDRSet`/`toCIDRSet` and their
/// `except` prefixes together.
pub const MAX_CIDRS_PER_RULE: usize = 1024;

/// Most port items in one rule (all `toPorts[*].ports` together).
pub const MAX_PORTS_PER_RULE: usize = 1024;

/// Most requirements in one selector (`matchLabels` entries plus `matchExpressions`).
pub const MAX_LABELS_PER_SELECTOR: usize = 64;

/// Most values in one `matchExpressions` requirement.
pub const MAX_VALUES_PER_EXPRESSION: usize = 256;

/// The message of a count limit: `what` exceeded `limit` (named after its constant).
pub(crate) fn too_many(what: &str, n: usize, limit: usize, name: &str) -> String {
    format!("{n} {what}; at most {limit} are allowed (limit {name})")
}

pub(crate) fn too_deep() -> String {
    format!("nested deeper than {MAX_DEPTH} levels (limit MAX_DEPTH)")
}

/// Where the YAML pre-scan found flow collections nested too deep (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct At {
    pub line: usize,
    pub column: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Normal,
    Single,
    Double,
    Comment,
    /// Content of a `|` / `>` block scalar: lines indented deeper than the column.
    Block(usize),
}

/// Linear scan of a YAML text for the nesting depth of its flow collections (`[`, `{`), in the
/// way libyaml tokenizes: quoted scalars, comments, block scalars, tags, anchors and brackets
/// inside block-context plain scalars (`a: x[1]`) are skipped. It errs on the side of counting:
/// an opening bracket counts unless it is inside a quoted scalar, comment or block scalar, a
/// closing one only ends a flow collection that was counted. Refuses at the first bracket that
/// would make the depth exceed [`MAX_DEPTH`], which bounds libyaml's per-token cost.
pub(crate) fn yaml_flow_prescan(bytes: &[u8]) -> Result<(), At> {
    let mut depth = 0usize;
    let mut mode = Mode::Normal;
    // Inside a plain scalar (its end is decided by the context).
    let mut in_plain = false;
    // Previous byte on this line (b' ' at the start of a line).
    let mut prev = b' ';
    // Column of the last block key or `-` indicator: continuation lines of a plain scalar and
    // block scalar content are indented deeper.
    let mut block_indent = 0usize;
    let mut key_start = 0usize;
    let (mut line, mut col) = (1usize, 0usize);
    let mut line_start = true;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let next = bytes.get(i + 1).copied().unwrap_or(b'\n');
        let blank_next = matches!(next, b' ' | b'\t' | b'\r' | b'\n');
        if b == b'\n' {
            if mode == Mode::Comment {
                mode = Mode::Normal;
            }
            line += 1;
            col = 0;
            prev = b' ';
            line_start = true;
            i += 1;
            continue;
        }
        if line_start && !matches!(b, b' ' | b'\t' | b'\r') {
            line_start = false;
            if let Mode::Block(indent) = mode {
                if col <= indent {
                    mode = Mode::Normal;
                }
            }
            if mode == Mode::Normal && depth == 0 && in_plain && col <= block_indent {
                // Not a continuation of the plain scalar: a new token.
                in_plain = false;
            }
            if mode == Mode::Normal && depth == 0 && !in_plain {
                key_start = col;
            }
        }
        match mode {
            Mode::Comment | Mode::Block(_) => {}
            Mode::Single => {
                if b == b'\'' {
                    if next == b'\'' {
                        i += 1;
                        col += 1;
                    } else {
                        mode = Mode::Normal;
                    }
                }
            }
            Mode::Double => {
                if b == b'\\' {
                    i += 1;
                    col += 1;
                } else if b == b'"' {
                    mode = Mode::Normal;
                }
            }
            Mode::Normal => {
                let flow = depth > 0;
                let token_start = !in_plain;
                match b {
                    b' ' | b'\t' | b'\r' => {}
                    b'#' if matches!(prev, b' ' | b'\t' | b'\r') => {
                        mode = Mode::Comment;
                        in_plain = false;
                    }
                    b'[' | b'{' if flow || token_start => {
                        depth += 1;
                        if depth > MAX_DEPTH {
                            return Err(At {
                                line,
                                column: col + 1,
                            });
                        }
                        in_plain = false;
                    }
                    b']' | b'}' if flow => {
                        depth -= 1;
                        in_plain = false;
                    }
                    b',' if flow => in_plain = false,
                    b':' if blank_next
                        || (flow && matches!(next, b',' | b'[' | b']' | b'{' | b'}')) =>
                    {
                        in_plain = false;
                        if !flow {
                            block_indent = key_start;
                        }
                    }
                    b':' if flow && token_start => {}
                    b'\'' | b'"'
                        if token_start
                            && (matches!(prev, b' ' | b'\t' | b'\r' | b'[' | b'{' | b',')
                                || (flow && prev == b':')) =>
                    {
                        mode = if b == b'\'' {
                            Mode::Single
                        } else {
                            Mode::Double
                        };
                    }
                    b'-' | b'?' if token_start && blank_next => {
                        if !flow {
                            block_indent = col;
                            key_start = col + 2;
                        }
                    }
                    b'|' | b'>' if token_start && !flow => {
                        mode = Mode::Block(block_indent);
                    }
                    b'%' if col == 0 => mode = Mode::Comment,
                    b'!' if token_start => {
                        // A tag: libyaml takes URI characters, brackets included.
                        while i + 1 < bytes.len()
                            && !matches!(bytes[i + 1], b' ' | b'\t' | b'\r' | b'\n' | b',')
                        {
                            i += 1;
                            col += 1;
                        }
                    }
                    b'&' | b'*' if token_start => {
                        while i + 1 < bytes.len()
                            && (bytes[i + 1].is_ascii_alphanumeric()
                                || matches!(bytes[i + 1], b'-' | b'_'))
                        {
                            i += 1;
                            col += 1;
                        }
                    }
                    _ => {
                        if token_start && !flow {
                            key_start = col;
                        }
                        in_plain = true;
                    }
                }
            }
        }
        prev = b;
        i += 1;
        col += 1;
    }
    Ok(())
}

/// Walks one document without keeping anything: refuses nesting beyond [`MAX_DEPTH`] and more
/// than [`MAX_NODES`] values in the file (`nodes` counts across documents).
pub(crate) struct Shape<'a> {
    pub depth: usize,
    pub nodes: &'a Cell<usize>,
}

impl Shape<'_> {
    fn count<E: de::Error>(&self) -> Result<(), E> {
        let n = self.nodes.get() + 1;
        self.nodes.set(n);
        if n > MAX_NODES {
            return Err(E::custom(format!(
                "more than {MAX_NODES} values in the file (limit MAX_NODES; YAML aliases count each time they are used)"
            )));
        }
        Ok(())
    }

    fn inner<E: de::Error>(&self) -> Result<Shape<'_>, E> {
        if self.depth >= MAX_DEPTH {
            return Err(E::custom(too_deep()));
        }
        Ok(Shape {
            depth: self.depth + 1,
            nodes: self.nodes,
        })
    }
}

impl<'de> DeserializeSeed<'de> for Shape<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Shape<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.count()
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.count()
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.count()
    }
    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.count()
    }
    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.count()
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.count()
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.count()
    }
    fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
        self.count()
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.count()
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.count()
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        self.count()?;
        let inner = self.inner()?;
        while seq
            .next_element_seed(Shape {
                depth: inner.depth,
                nodes: inner.nodes,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        self.count()?;
        let inner = self.inner()?;
        while map
            .next_key_seed(Shape {
                depth: inner.depth,
                nodes: inner.nodes,
            })?
            .is_some()
        {
            map.next_value_seed(Shape {
                depth: inner.depth,
                nodes: inner.nodes,
            })?;
        }
        Ok(())
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
        // YAML tags (`!foo value`): walk the value.
        use de::VariantAccess;
        self.count()?;
        let (_, v): (de::IgnoredAny, _) = data.variant()?;
        v.newtype_variant_seed(self.inner()?)
    }
}

/// Walks one document with [`Shape`], the document being level 1.
pub(crate) fn check_shape<'de, D: Deserializer<'de>>(
    d: D,
    nodes: &Cell<usize>,
) -> Result<(), D::Error> {
    Shape { depth: 0, nodes }.deserialize(d)
}
