//! `ilanet bench fuzz store`: store keys and values (puts and deletes, as a watch or a listing
//! delivers them) through `store::decode_record`, the one decoder both backends use.
//!
//! Oracle beyond "no panic": a well-formed record decodes to exactly what was encoded (round
//! trip), and every refusal is `Malformed` naming the key it came with.

use ila::{ChecksumMode, Identifier, Locator, SirPrefix};
use store::{HostRecord, IdentityRecord, MappingRecord, PolicyRecord, StoreError, StoreEvent};

use crate::fuzz_harness::{drive, mutate_bytes, FuzzConfig, FuzzReport, Generated, Rng, Verdict};
use crate::BenchError;

/// One input: a key, a value (`None`: a delete), and the event it must decode to if known.
pub struct StoreInput {
    key: Vec<u8>,
    value: Option<Vec<u8>>,
    expect: Option<Option<StoreEvent>>,
}

const NAMES: [&str; 6] = ["site-a", "h1", "web-1", "a.b-c", "x", "é"];
const PIECES: [&[u8]; 10] = [
    b"\"",
    b"\\u0000",
    b"{",
    b"[",
    b"::",
    b"%",
    b"%2F",
    b"99999999999",
    b"-1",
    b"/",
];

fn record(rng: &mut Rng) -> (Vec<u8>, Vec<u8>, StoreEvent) {
    match rng.below(5) {
        0 => {
            let r = MappingRecord {
                endpoint: rng.pick(&NAMES).to_string(),
                host: rng.pick(&NAMES).to_string(),
                sir: SirPrefix(rng.next_u64()),
                identifier: Identifier(rng.next_u64()),
                locator: Locator(rng.next_u64()),
                mode: *rng.pick(&ChecksumMode::ALL),
                identity: rng.next_u64() as u32,
                labels_sha256: None,
            };
            (
                store::mapping_key(&r.host, r.sir_address()).into_bytes(),
                enc(&r),
                StoreEvent::PutMapping(r),
            )
        }
        1 => {
            let r = HostRecord {
                name: rng.pick(&NAMES).to_string(),
                locator: Locator(rng.next_u64()),
                underlay: std::net::Ipv6Addr::from(u128::from(rng.next_u64()) << 64),
            };
            (
                store::host_key(&r.name).into_bytes(),
                enc(&r),
                StoreEvent::PutHost(r),
            )
        }
        2 => {
            let span = store::IDENTITY_LIMIT - store::MIN_ALLOCATED_IDENTITY;
            let r = IdentityRecord {
                id: store::MIN_ALLOCATED_IDENTITY + (rng.next_u64() as u32) % span,
                labels: format!("app={},{}=7", rng.pick(&NAMES), policy::TENANT_LABEL),
            };
            (
                store::identity_key(r.id).into_bytes(),
                enc(&r),
                StoreEvent::PutIdentity(r),
            )
        }
        _ => {
            let r = PolicyRecord {
                name: rng.pick(&["p", "allow-web.v1", "a-b", "x9"]).to_string(),
                document: rng
                    .pick(&[r#"{}"#, r#"[1,2]"#, r#"{"spec":{"endpointSelector":{}}}"#])
                    .to_string(),
            };
            (
                store::policy_key(&r.name).into_bytes(),
                enc(&r),
                StoreEvent::PutPolicy(r),
            )
        }
    }
}

fn enc<T: serde::Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

fn generate(rng: &mut Rng) -> Generated<StoreInput> {
    let (kind, input) = match rng.below(100) {
        0..=19 => {
            let (key, value, ev) = record(rng);
            (
                "valid",
                StoreInput {
                    key,
                    value: Some(value),
                    expect: Some(Some(ev)),
                },
            )
        }
        20..=29 => {
            let (key, _, _) = record(rng);
            let key = mutate_bytes(rng, &key, &PIECES);
            (
                "delete",
                StoreInput {
                    key,
                    value: None,
                    expect: None,
                },
            )
        }
        30..=34 => {
            // Identity index keys: escaped label sets, mutated.
            let labels = format!("a/b={} c%,{}=1", rng.pick(&NAMES), policy::TENANT_LABEL);
            let key = store::identity_labels_key(&labels).into_bytes();
            let key = if rng.one_in(2) {
                mutate_bytes(rng, &key, &PIECES)
            } else {
                key
            };
            let value = mutate_bytes(rng, b"4242", &PIECES);
            (
                "identity-index",
                StoreInput {
                    key,
                    value: Some(value),
                    expect: None,
                },
            )
        }
        35 if rng.one_in(500) => {
            // Beyond the size bounds (rare: they are large).
            let (key, mut value, _) = record(rng);
            let (key, value) = if rng.one_in(2) {
                value.resize(store::MAX_VALUE_BYTES + 1 + rng.below(64), b' ');
                (key, value)
            } else {
                let mut k = store::HOSTS_PREFIX.as_bytes().to_vec();
                k.resize(store::MAX_KEY_BYTES + 1 + rng.below(64), b'h');
                (k, value)
            };
            (
                "oversized",
                StoreInput {
                    key,
                    value: Some(value),
                    expect: None,
                },
            )
        }
        36..=39 => {
            let mut key = store::KEY_PREFIX.as_bytes().to_vec();
            let n = rng.below(24);
            key.extend(rng.bytes(n));
            let n = rng.below(64);
            (
                "random",
                StoreInput {
                    key,
                    value: Some(rng.bytes(n)),
                    expect: None,
                },
            )
        }
        _ => {
            let (key, value, _) = record(rng);
            let (key, value) = match rng.below(3) {
                0 => (mutate_bytes(rng, &key, &PIECES), value),
                1 => (key, mutate_bytes(rng, &value, &PIECES)),
                _ => (
                    mutate_bytes(rng, &key, &PIECES),
                    mutate_bytes(rng, &value, &PIECES),
                ),
            };
            (
                "mutated",
                StoreInput {
                    key,
                    value: Some(value),
                    expect: None,
                },
            )
        }
    };
    let size = input.key.len() + input.value.as_ref().map_or(0, Vec::len);
    Generated { kind, input, size }
}

/// Feeds one input; outcomes: `put:<kind>`, `delete:<kind>`, `ignored`, `malformed`.
pub fn feed(i: &StoreInput) -> Verdict {
    let got = store::decode_record(&i.key, i.value.as_deref());
    if let Some(want) = &i.expect {
        if got.as_ref().ok() != Some(want) {
            return Verdict::Violation(
                "round-trip".into(),
                format!("encoded {want:?}, decoded {got:?}"),
            );
        }
    }
    match got {
        Ok(None) => Verdict::ok("ignored"),
        Ok(Some(ev)) => Verdict::ok(match ev {
            StoreEvent::PutMapping(_) => "put:mapping",
            StoreEvent::PutHost(_) => "put:host",
            StoreEvent::PutIdentity(_) => "put:identity",
            StoreEvent::PutPolicy(_) => "put:policy",
            StoreEvent::DeleteMapping { .. } => "delete:mapping",
            StoreEvent::DeleteHost(_) => "delete:host",
            StoreEvent::DeletePolicy(_) => "delete:policy",
            StoreEvent::Resync => "resync",
        }),
        Err(StoreError::Malformed { key, reason }) => {
            let full = String::from_utf8_lossy(&i.key);
            let named = key == full
                || (key.ends_with("...") && full.starts_with(key.trim_end_matches("...")));
            if !named {
                return Verdict::Violation(
                    "malformed-wrong-key".into(),
                    format!("error names {key:?} for key {full:?}: {reason}"),
                );
            }
            let limit = ["MAX_VALUE_BYTES", "MAX_KEY_BYTES"]
                .into_iter()
                .find(|l| reason.contains(l));
            Verdict::ok(match limit {
                Some(l) => format!("malformed:{l}"),
                None => "malformed".into(),
            })
        }
        Err(e) => Verdict::Violation("other-error".into(), e.to_string()),
    }
}

/// Runs the store-record fuzzer.
pub fn run(cfg: &FuzzConfig, progress: &mut dyn FnMut(u64)) -> Result<FuzzReport, BenchError> {
    drive("store", cfg, progress, generate, feed, |i| {
        let mut b = i.key.clone();
        b.push(b'\n');
        if let Some(v) = &i.value {
            b.extend_from_slice(v);
        } else {
            b.extend_from_slice(b"(delete)");
        }
        b
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_run_has_no_panics_or_violations() {
        let r = run(
            &FuzzConfig {
                count: 5000,
                seed: 3,
                save_dir: None,
            },
            &mut |_| {},
        )
        .expect("run");
        assert_eq!((r.panics, r.violations), (0, 0), "{:#?}", r.findings);
        for k in [
            "put:mapping",
            "put:host",
            "put:identity",
            "put:policy",
            "malformed",
        ] {
            assert!(r.outcomes.contains_key(k), "{k}: {:?}", r.outcomes);
        }
    }
}
