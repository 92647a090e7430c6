//! Label selectors (`matchLabels` + `matchExpressions`), as in Kubernetes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::labels::{LabelSet, TENANT_LABEL};

/// Operator of a [`Requirement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operator {
    /// The key is present and its value is one of the values.
    In,
    /// The key is absent, or its value is none of the values.
    NotIn,
    /// The key is present.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

/// One `matchExpressions` item.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Requirement {
    /// Label key.
    pub key: String,
    /// Operator.
    pub operator: Operator,
    /// Values (non-empty for `In`/`NotIn`, empty for `Exists`/`DoesNotExist`).
    pub values: BTreeSet<String>,
}

impl Requirement {
    /// Whether `labels` satisfy this requirement.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let v = labels.get(&self.key);
        match self.operator {
            Operator::In => v.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => v.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => v.is_some(),
            Operator::DoesNotExist => v.is_none(),
        }
    }
}

/// A label selector: every `matchLabels` pair and every requirement must hold. The empty
/// selector matches every label set.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Selector {
    /// Exact `key: value` pairs.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// Whether `labels` match this selector.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// Whether the selector names `key` anywhere.
    pub fn mentions(&self, key: &str) -> bool {
        self.match_labels.contains_key(key) || self.match_expressions.iter().any(|r| r.key == key)
    }

    /// Whether the selector names [`TENANT_LABEL`], i.e. may match endpoints of other tenants.
    pub fn names_tenant(&self) -> bool {
        self.mentions(TENANT_LABEL)
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut sep = |f: &mut fmt::Formatter<'_>| {
            if first {
                first = false;
                Ok(())
            } else {
                f.write_str(",")
            }
        };
        f.write_str("{")?;
        for (k, v) in &self.match_labels {
            sep(f)?;
            write!(f, "{k}={v}")?;
        }
        for r in &self.match_expressions {
            sep(f)?;
            let vals: Vec<&str> = r.values.iter().map(String::as_str).collect();
            match r.operator {
                Operator::In => write!(f, "{} in ({})", r.key, vals.join(" "))?,
                Operator::NotIn => write!(f, "{} notin ({})", r.key, vals.join(" "))?,
                Operator::Exists => write!(f, "{}", r.key)?,
                Operator::DoesNotExist => write!(f, "!{}", r.key)?,
            }
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators() {
        let l = LabelSet::parse("app=web,tier=front").unwrap();
        let req = |key: &str, operator, vals: &[&str]| Requirement {
            key: key.into(),
            operator,
            values: vals.iter().map(|s| s.to_string()).collect(),
        };
        assert!(req("app", Operator::In, &["web", "db"]).matches(&l));
        assert!(!req("app", Operator::In, &["db"]).matches(&l));
        assert!(!req("x", Operator::In, &["db"]).matches(&l));
        assert!(req("x", Operator::NotIn, &["db"]).matches(&l));
        assert!(!req("app", Operator::NotIn, &["web"]).matches(&l));
        assert!(req("tier", Operator::Exists, &[]).matches(&l));
        assert!(req("x", Operator::DoesNotExist, &[]).matches(&l));
        assert!(Selector::default().matches(&l));
        let s = Selector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            match_expressions: vec![req("tier", Operator::NotIn, &["back"])],
        };
        assert!(s.matches(&l));
        assert_eq!(s.to_string(), "{app=web,tier notin (back)}");
    }
}
