//! The marketplace's data and its logic, without I/O: generated records (deterministic from a
//! seed, with deliberate overlaps between the sites), their CSV form, the query language the
//! search containers run, and the correlate step (merge, remove duplicates).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Data sites per marketplace (the paper's Fig. 2: N = 3).
pub const DATA_SITES: usize = 3;
/// Most records one site may hold (`--records`): bounds the files, the transfers and the answer.
pub const MAX_RECORDS: usize = 100_000;
/// Longest accepted query text.
pub const MAX_QUERY_LEN: usize = 256;
/// Most `and`-joined clauses in a query.
pub const MAX_CLAUSES: usize = 8;
/// The query run unless `--query` says otherwise.
pub const DEFAULT_QUERY: &str = "category=genome and score>=40";
/// Categories of the generated records.
pub const CATEGORIES: [&str; 5] = ["genome", "protein", "climate", "imaging", "survey"];
/// First line of a data file.
pub const CSV_HEADER: &str = "id,category,year,score,subject";
/// Longest line a data file or a transfer may carry.
pub const MAX_LINE: usize = 256;

/// One record of a site's data set. `subject` is the private part that must never leave the
/// site; a search result ([`Hit`]) carries everything else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Record id, the same at every site that holds the record.
    pub id: String,
    /// One of [`CATEGORIES`].
    pub category: String,
    /// Year of the observation.
    pub year: u16,
    /// Quality score, 0 to 100.
    pub score: u8,
    /// Private: whom the record is about.
    pub subject: String,
}

/// A search result: a record without its private subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Hit {
    /// Record id.
    pub id: String,
    /// Category.
    pub category: String,
    /// Year.
    pub year: u16,
    /// Score.
    pub score: u8,
}

impl Hit {
    /// The shareable part of a record.
    pub fn of(r: &Record) -> Self {
        Hit {
            id: r.id.clone(),
            category: r.category.clone(),
            year: r.year,
            score: r.score,
        }
    }

    /// `id,category,year,score`.
    pub fn to_line(&self) -> String {
        format!("{},{},{},{}", self.id, self.category, self.year, self.score)
    }

    /// Parses [`Hit::to_line`]'s form.
    pub fn parse_line(line: &str) -> Result<Self, DataError> {
        let f: Vec<&str> = line.split(',').collect();
        let [id, category, year, score] = f[..] else {
            return Err(DataError(format!(
                "result line '{}' has {} fields, expected 4 (id,category,year,score)",
                clip(line),
                f.len()
            )));
        };
        Ok(Hit {
            id: check_id(id)?,
            category: check_category(category)?,
            year: parse_num(year, "year")?,
            score: parse_num(score, "score")?,
        })
    }
}

/// Bad data, a bad query or a bad result, with what and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataError(pub String);

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DataError {}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

fn check_id(s: &str) -> Result<String, DataError> {
    let ok =
        !s.is_empty() && s.len() <= 32 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(s.to_string())
    } else {
        Err(DataError(format!(
            "record id '{}' is not valid (1 to 32 of a-z, A-Z, 0-9, '-')",
            clip(s)
        )))
    }
}

fn check_category(s: &str) -> Result<String, DataError> {
    if CATEGORIES.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(DataError(format!(
            "category '{}' is not one of {}",
            clip(s),
            CATEGORIES.join(", ")
        )))
    }
}

fn parse_num<T: std::str::FromStr>(s: &str, what: &str) -> Result<T, DataError> {
    s.parse()
        .map_err(|_| DataError(format!("{what} '{}' is not a valid number", clip(s))))
}

/// SplitMix64: small, fast and the same on every machine, so a seed names one data set.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        // n ≤ 2 × MAX_RECORDS: the modulo bias is far below anything observable here.
        (self.next() % n as u64) as usize
    }
}

/// The [`DATA_SITES`] data sets of one marketplace: each site holds `n` distinct records drawn
/// from a shared pool of `2n`, so that (3n draws from 2n records) at least `n` records are held
/// by more than one site — the duplicates the correlate step must remove. Deterministic in
/// `(seed, tenant, n)`; tenants get different data from the same seed.
pub fn generate(seed: u64, tenant: u32, n: usize) -> Vec<Vec<Record>> {
    let mut rng = SplitMix(seed ^ u64::from(tenant).wrapping_mul(0xd6e8_feb8_6659_fd93));
    let pool_len = 2 * n;
    let pool: Vec<Record> = (0..pool_len)
        .map(|k| Record {
            id: format!("r{k:06}"),
            category: CATEGORIES[rng.below(CATEGORIES.len())].to_string(),
            year: 2000 + rng.below(25) as u16,
            score: rng.below(101) as u8,
            subject: format!("subject-{:016x}", rng.next()),
        })
        .collect();
    (0..DATA_SITES)
        .map(|_| {
            // Partial Fisher–Yates: n distinct pool indices.
            let mut idx: Vec<usize> = (0..pool_len).collect();
            for i in 0..n {
                let j = i + rng.below(pool_len - i);
                idx.swap(i, j);
            }
            let mut pick = idx[..n].to_vec();
            pick.sort_unstable();
            pick.into_iter().map(|i| pool[i].clone()).collect()
        })
        .collect()
}

/// A data file: [`CSV_HEADER`], then one record per line.
pub fn to_csv(records: &[Record]) -> String {
    let mut s = String::with_capacity(records.len() * 48 + CSV_HEADER.len() + 1);
    s.push_str(CSV_HEADER);
    s.push('\n');
    for r in records {
        s.push_str(&format!(
            "{},{},{},{},{}\n",
            r.id, r.category, r.year, r.score, r.subject
        ));
    }
    s
}

/// Parses a data file written by [`to_csv`]; errors name the line.
pub fn parse_csv(text: &str) -> Result<Vec<Record>, DataError> {
    let mut lines = text.lines().enumerate();
    match lines.next() {
        Some((_, h)) if h == CSV_HEADER => {}
        _ => {
            return Err(DataError(format!(
                "line 1: expected the header '{CSV_HEADER}'"
            )))
        }
    }
    let mut out = Vec::new();
    for (i, line) in lines {
        if out.len() >= 2 * MAX_RECORDS {
            return Err(DataError(format!(
                "more than {} records (limit)",
                2 * MAX_RECORDS
            )));
        }
        out.push(parse_record(line).map_err(|e| DataError(format!("line {}: {e}", i + 1)))?);
    }
    Ok(out)
}

/// One data line: `id,category,year,score,subject`.
pub fn parse_record(line: &str) -> Result<Record, DataError> {
    if line.len() > MAX_LINE {
        return Err(DataError(format!("longer than {MAX_LINE} bytes")));
    }
    let f: Vec<&str> = line.split(',').collect();
    let [id, category, year, score, subject] = f[..] else {
        return Err(DataError(format!(
            "{} fields, expected 5 ({CSV_HEADER})",
            f.len()
        )));
    };
    Ok(Record {
        id: check_id(id)?,
        category: check_category(category)?,
        year: parse_num(year, "year")?,
        score: parse_num(score, "score")?,
        subject: subject.to_string(),
    })
}

/// A field a query can test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Id,
    Category,
    Year,
    Score,
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
        }
    }

    fn holds<T: Ord>(self, a: &T, b: &T) -> bool {
        match self {
            Op::Eq => a == b,
            Op::Ne => a != b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Gt => a > b,
            Op::Ge => a >= b,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Value {
    Text(String),
    Num(u32),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Clause {
    field: Field,
    op: Op,
    value: Value,
}

/// A search query: `field op value`, clauses joined by `and`. Fields `id` and `category` take
/// `=` and `!=`; `year` and `score` also `<`, `<=`, `>`, `>=`. Example: [`DEFAULT_QUERY`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    clauses: Vec<Clause>,
}

impl std::str::FromStr for Query {
    type Err = DataError;

    fn from_str(text: &str) -> Result<Self, DataError> {
        if text.len() > MAX_QUERY_LEN {
            return Err(DataError(format!(
                "query is {} bytes; at most {MAX_QUERY_LEN} are allowed",
                text.len()
            )));
        }
        let words: Vec<&str> = text.split_whitespace().collect();
        let mut parts: Vec<String> = vec![String::new()];
        for w in words {
            if w.eq_ignore_ascii_case("and") {
                parts.push(String::new());
            } else if let Some(last) = parts.last_mut() {
                last.push_str(w);
            }
        }
        if parts.len() > MAX_CLAUSES {
            return Err(DataError(format!(
                "query has {} clauses; at most {MAX_CLAUSES} are allowed",
                parts.len()
            )));
        }
        let clauses = parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                parse_clause(p).map_err(|e| DataError(format!("query clause {}: {e}", i + 1)))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Query { clauses })
    }
}

fn parse_clause(s: &str) -> Result<Clause, DataError> {
    if s.is_empty() {
        return Err(DataError(
            "empty (expected field op value, e.g. score>=40)".into(),
        ));
    }
    let at = s
        .find(['!', '<', '>', '='])
        .ok_or_else(|| DataError(format!("'{s}' has no comparison (=, !=, <, <=, >, >=)")))?;
    let (name, rest) = s.split_at(at);
    let (op, value) = if let Some(v) = rest.strip_prefix("!=") {
        (Op::Ne, v)
    } else if let Some(v) = rest.strip_prefix("<=") {
        (Op::Le, v)
    } else if let Some(v) = rest.strip_prefix(">=") {
        (Op::Ge, v)
    } else if let Some(v) = rest.strip_prefix('=') {
        (Op::Eq, v)
    } else if let Some(v) = rest.strip_prefix('<') {
        (Op::Lt, v)
    } else if let Some(v) = rest.strip_prefix('>') {
        (Op::Gt, v)
    } else {
        return Err(DataError(format!("'{s}': '!' must be followed by '='")));
    };
    let field = match name {
        "id" => Field::Id,
        "category" => Field::Category,
        "year" => Field::Year,
        "score" => Field::Score,
        other => {
            return Err(DataError(format!(
                "unknown field '{other}' (expected id, category, year or score)"
            )))
        }
    };
    if value.is_empty() {
        return Err(DataError(format!("'{s}' has no value")));
    }
    let value = match field {
        Field::Id | Field::Category => {
            if !matches!(op, Op::Eq | Op::Ne) {
                return Err(DataError(format!(
                    "'{name}' takes = or != only, not {}",
                    op.as_str()
                )));
            }
            if field == Field::Category {
                check_category(value)?;
            } else {
                check_id(value)?;
            }
            Value::Text(value.to_string())
        }
        Field::Year | Field::Score => Value::Num(parse_num(value, name)?),
    };
    Ok(Clause { field, op, value })
}

impl Query {
    /// Whether a record satisfies every clause.
    pub fn matches(&self, r: &Record) -> bool {
        self.clauses.iter().all(|c| match (&c.field, &c.value) {
            (Field::Id, Value::Text(v)) => c.op.holds(&r.id.as_str(), &v.as_str()),
            (Field::Category, Value::Text(v)) => c.op.holds(&r.category.as_str(), &v.as_str()),
            (Field::Year, Value::Num(v)) => c.op.holds(&u32::from(r.year), v),
            (Field::Score, Value::Num(v)) => c.op.holds(&u32::from(r.score), v),
            // The parser pairs text fields with text values and numbers with numbers.
            _ => false,
        })
    }
}

impl fmt::Display for Query {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .clauses
            .iter()
            .map(|c| {
                let name = match c.field {
                    Field::Id => "id",
                    Field::Category => "category",
                    Field::Year => "year",
                    Field::Score => "score",
                };
                let v = match &c.value {
                    Value::Text(t) => t.clone(),
                    Value::Num(n) => n.to_string(),
                };
                format!("{name}{}{v}", c.op.as_str())
            })
            .collect();
        f.write_str(&parts.join(" and "))
    }
}

/// What a search container computes over its site's data.
pub fn search(records: &[Record], q: &Query) -> Vec<Hit> {
    records
        .iter()
        .filter(|r| q.matches(r))
        .map(Hit::of)
        .collect()
}

/// The correlate step's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Merged {
    /// Results received, duplicates included.
    pub received: usize,
    /// Results dropped as duplicates of one already kept.
    pub duplicates: usize,
    /// Ids that arrived with different content from different sites (should never happen).
    pub conflicts: Vec<String>,
    /// The answer: one hit per id, sorted by id.
    pub answer: Vec<Hit>,
}

/// Merges result sets and removes duplicates (same id).
pub fn merge<'a>(sets: impl IntoIterator<Item = &'a [Hit]>) -> Merged {
    let mut by_id: BTreeMap<&str, &Hit> = BTreeMap::new();
    let mut m = Merged::default();
    for set in sets {
        for h in set {
            m.received += 1;
            match by_id.get(h.id.as_str()) {
                None => {
                    by_id.insert(&h.id, h);
                }
                Some(kept) => {
                    m.duplicates += 1;
                    if *kept != h && !m.conflicts.contains(&h.id) {
                        m.conflicts.push(h.id.clone());
                    }
                }
            }
        }
    }
    m.answer = by_id.into_values().cloned().collect();
    m
}

/// The reference answer, computed the other way round from the correlate step: union of all
/// sites' records first (by id), then the query once over the union.
pub fn direct_answer(sites: &[Vec<Record>], q: &Query) -> (usize, Vec<Hit>) {
    let mut all: BTreeMap<&str, &Record> = BTreeMap::new();
    for r in sites.iter().flatten() {
        all.entry(r.id.as_str()).or_insert(r);
    }
    let distinct = all.len();
    let answer = all
        .into_values()
        .filter(|r| q.matches(r))
        .map(Hit::of)
        .collect();
    (distinct, answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Query {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn generation_is_deterministic_overlapping_and_per_tenant() {
        let a = generate(7, 1, 300);
        assert_eq!(a, generate(7, 1, 300));
        assert_ne!(a, generate(8, 1, 300));
        assert_ne!(a, generate(7, 2, 300));
        assert_eq!(a.len(), DATA_SITES);
        let mut seen: BTreeMap<&str, (&Record, usize)> = BTreeMap::new();
        for site in &a {
            assert_eq!(site.len(), 300);
            for r in site {
                let e = seen.entry(&r.id).or_insert((r, 0));
                assert_eq!(e.0, r, "a shared record is identical at every site");
                e.1 += 1;
            }
        }
        let shared = seen.values().filter(|(_, n)| *n > 1).count();
        // 900 draws from a pool of 600: at least 300 extra copies (pigeonhole).
        let copies: usize = seen.values().map(|(_, n)| n - 1).sum();
        assert!(copies >= 300, "{copies}");
        assert!(shared > 0);
        // Tiny sets overlap too.
        let t = generate(1, 1, 1);
        assert!(t[0] == t[1] || t[1] == t[2] || t[0] == t[2]);
    }

    #[test]
    fn csv_round_trips_and_errors_name_the_line() {
        let sites = generate(3, 1, 20);
        let text = to_csv(&sites[0]);
        assert_eq!(parse_csv(&text).expect("parse"), sites[0]);
        let bad = text.replacen("genome", "gnome", 1);
        if bad != text {
            let e = parse_csv(&bad).expect_err("bad category");
            assert!(e.0.starts_with("line "), "{e}");
        }
        let e = parse_csv("id,x\n").expect_err("header");
        assert!(e.0.contains("header"), "{e}");
        let e = parse_csv(&format!("{CSV_HEADER}\nr1,genome,2001,5\n")).expect_err("fields");
        assert!(e.0.contains("line 2") && e.0.contains("4 fields"), "{e}");
    }

    #[test]
    fn queries_parse_evaluate_and_refuse_nonsense() {
        let r = Record {
            id: "r000001".into(),
            category: "genome".into(),
            year: 2010,
            score: 40,
            subject: "s".into(),
        };
        assert!(q(DEFAULT_QUERY).matches(&r));
        assert!(q("category = genome AND score >= 40 and year<2011").matches(&r));
        assert!(!q("score>40").matches(&r));
        assert!(q("id!=r000002").matches(&r));
        assert!(!q("category!=genome").matches(&r));
        assert_eq!(
            q("score >= 40 and year<2011").to_string(),
            "score>=40 and year<2011"
        );
        for (bad, why) in [
            ("", "empty"),
            ("score", "no comparison"),
            ("colour=red", "unknown field"),
            ("category=gnome", "category"),
            ("category>genome", "= or !="),
            ("score>=lots", "not a valid number"),
            ("score>=", "no value"),
            ("score!5", "followed by"),
            ("score>1 and", "clause 2"),
        ] {
            let e = bad.parse::<Query>().expect_err(bad);
            assert!(e.0.contains(why), "{bad}: {e}");
        }
        let long = ["score>1"; MAX_CLAUSES + 1].join(" and ");
        assert!(long.parse::<Query>().is_err());
        assert!("x".repeat(MAX_QUERY_LEN + 1).parse::<Query>().is_err());
    }

    #[test]
    fn correlate_merge_equals_the_direct_answer() {
        for seed in 0..20 {
            let sites = generate(seed, 1, 200);
            let query = q(DEFAULT_QUERY);
            let results: Vec<Vec<Hit>> = sites.iter().map(|s| search(s, &query)).collect();
            let merged = merge(results.iter().map(Vec::as_slice));
            let (_, direct) = direct_answer(&sites, &query);
            assert_eq!(merged.answer, direct, "seed {seed}");
            assert!(merged.conflicts.is_empty());
            assert_eq!(
                merged.received,
                merged.answer.len() + merged.duplicates,
                "seed {seed}"
            );
            assert!(
                merged.duplicates > 0,
                "seed {seed}: overlaps reach the answer"
            );
        }
    }

    #[test]
    fn merge_reports_conflicting_duplicates() {
        let a = Hit {
            id: "r1".into(),
            category: "genome".into(),
            year: 2001,
            score: 50,
        };
        let b = Hit {
            score: 51,
            ..a.clone()
        };
        let m = merge([std::slice::from_ref(&a), std::slice::from_ref(&b)]);
        assert_eq!(m.conflicts, ["r1"]);
        assert_eq!((m.received, m.duplicates, m.answer.len()), (2, 1, 1));
    }

    #[test]
    fn hit_lines_round_trip() {
        let h = Hit {
            id: "r000009".into(),
            category: "survey".into(),
            year: 2024,
            score: 100,
        };
        assert_eq!(Hit::parse_line(&h.to_line()).expect("parse"), h);
        assert!(Hit::parse_line("r1,survey,2024").is_err());
        assert!(Hit::parse_line("r1,survey,2024,300").is_err());
    }
}
