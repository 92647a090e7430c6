//! Shared test helpers: a small world of endpoints and policies, evaluated both by the reference
//! evaluator and through the compiled tables.

#![allow(dead_code)]

use std::net::Ipv6Addr;

use ila::Vnid;
use policy::{
    compile, CompileLimits, CompiledPolicy, Direction, Endpoint, EndpointId, Evaluator,
    Explanation, FlowPeer, Identity, IdentityAllocator, IdentityTable, LabelSet, LookupPeer,
    Policy,
};

pub fn vnid(n: u32) -> Vnid {
    Vnid::new(n).unwrap()
}

pub fn ep(id: u64, tenant: u32, labels: &str) -> Endpoint {
    Endpoint {
        id: EndpointId(id),
        tenant: vnid(tenant),
        labels: LabelSet::parse(labels).unwrap(),
    }
}

pub struct World {
    pub policies: Vec<Policy>,
    pub endpoints: Vec<Endpoint>,
    pub table: IdentityTable,
    pub compiled: CompiledPolicy,
}

impl World {
    pub fn new(policies: Vec<Policy>, endpoints: Vec<Endpoint>) -> World {
        let mut table = IdentityTable::new();
        for e in &endpoints {
            table.allocate(&e.identity_labels()).unwrap();
        }
        let ids: Vec<(Identity, LabelSet)> = table.iter().map(|(i, l)| (i, l.clone())).collect();
        let compiled = compile(&policies, &ids, &CompileLimits::default()).unwrap();
        World {
            policies,
            endpoints,
            table,
            compiled,
        }
    }

    pub fn from_yaml(yaml: &str, default_tenant: u32, endpoints: Vec<Endpoint>) -> World {
        let policies =
            policy::parse_policy_file("test.yaml", yaml.as_bytes(), vnid(default_tenant))
                .unwrap_or_else(|e| panic!("{e}"));
        World::new(policies, endpoints)
    }

    pub fn identity(&self, id: EndpointId) -> Identity {
        let e = self.endpoints.iter().find(|e| e.id == id).unwrap();
        self.table.lookup(&e.identity_labels()).unwrap()
    }

    pub fn lookup_peer(&self, p: &FlowPeer) -> LookupPeer {
        match p {
            FlowPeer::Endpoint(id) => {
                let e = self.endpoints.iter().find(|e| e.id == *id).unwrap();
                LookupPeer::Identity {
                    identity: self.identity(*id),
                    tenant: Some(e.tenant),
                }
            }
            FlowPeer::Host => LookupPeer::Identity {
                identity: Identity::HOST,
                tenant: None,
            },
            FlowPeer::World(a) => LookupPeer::Address(*a),
        }
    }

    /// Explains with both evaluators, asserts they agree, returns the explanation.
    #[track_caller]
    pub fn explain(&self, from: FlowPeer, to: FlowPeer, dport: u16, proto: u8) -> Explanation {
        let r = Evaluator::new(&self.policies, &self.endpoints).explain(&from, &to, dport, proto);
        let c = self
            .compiled
            .explain(self.lookup_peer(&from), self.lookup_peer(&to), dport, proto);
        assert_eq!(r.verdict, c.verdict, "reference {r:?}\ncompiled {c:?}");
        assert_eq!(r.rule, c.rule, "reference {r:?}\ncompiled {c:?}");
        for (a, b) in [(&r.egress, &c.egress), (&r.ingress, &c.ingress)] {
            match (a, b) {
                (Some(a), Some(b)) => {
                    assert_eq!((a.verdict, a.reason, a.rule), (b.verdict, b.reason, b.rule))
                }
                (None, None) => {}
                _ => panic!("reference {r:?}\ncompiled {c:?}"),
            }
        }
        r
    }

    /// Every difference between the reference and the compiled lookup over all ordered pairs of
    /// endpoints, the host, the given external addresses, protocols and ports.
    pub fn mismatches(&self, addrs: &[Ipv6Addr], protos: &[u8], ports: &[u16]) -> Vec<String> {
        let reference = Evaluator::new(&self.policies, &self.endpoints);
        let mut peers: Vec<FlowPeer> = self
            .endpoints
            .iter()
            .map(|e| FlowPeer::Endpoint(e.id))
            .collect();
        peers.push(FlowPeer::Host);
        peers.extend(addrs.iter().map(|a| FlowPeer::World(*a)));
        let mut out = Vec::new();
        for local in &self.endpoints {
            let lid = self.identity(local.id);
            for peer in &peers {
                for dir in Direction::ALL {
                    for &proto in protos {
                        for &port in ports {
                            let r = reference.decide(local.id, dir, peer, proto, port);
                            let c =
                                self.compiled
                                    .lookup(lid, dir, self.lookup_peer(peer), proto, port);
                            if (r.verdict, r.reason, r.rule) != (c.verdict, c.reason, c.rule) {
                                out.push(format!(
                                    "endpoint {} {dir} peer {peer:?} proto {proto} port {port}: reference {:?}/{:?}/{:?}, compiled {:?}/{:?}/{:?}",
                                    local.id.0, r.verdict, r.reason, r.rule, c.verdict, c.reason, c.rule
                                ));
                            }
                        }
                    }
                }
            }
        }
        out
    }
}
