//! Scenario 5: policy evaluation in process, with 10 to 100,000 rules in the mesh.

use crate::run::{Report, Settings};
use serde_json::json;
use std::time::Instant;

/// Time per decision with `rules` rules spread over the mesh (10 per policy, one policy per
/// service, 100 services per namespace), the evaluated workload holding one policy.
pub(crate) fn policy_eval(rules: usize, iterations: u64) -> f64 {
    use palisade_contract::documents::parse_documents;
    use palisade_contract::policy::{DefaultMode, PolicySet, Request as Authz, Workload};
    let policies = rules.div_ceil(10);
    let mut all = Vec::with_capacity(policies);
    for p in 0..policies {
        let mut text = String::new();
        let (ns, svc) = (format!("ns{}", p / 100), format!("svc{}", p % 100));
        text.push_str(&format!(
            "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: p{p}, namespace: {ns} }}\n\
             spec:\n  selector: {{ service: {svc} }}\n  rules:\n"
        ));
        for r in 0..10 {
            text.push_str(&format!(
                "    - from: [ {{ principals: [\"spiffe://palisade.local/ns/{ns}/sa/caller{r}\"] }} ]\n      to: [ {{ methods: [\"GET\"], paths: [\"/items/{r}/*\"] }} ]\n"
            ));
        }
        all.extend(
            parse_documents(&text)
                .expect("generated policies are valid")
                .authorization,
        );
    }
    let set = PolicySet::new(&all, 1, DefaultMode::Deny);
    let source =
        palisade_contract::SpiffeId::parse("spiffe://palisade.local/ns/ns0/sa/caller9").unwrap();
    let headers = http::HeaderMap::new();
    let request = Authz {
        source: Some(&source),
        request_principal: None,
        claims: None,
        method: "GET",
        path: "/items/9/42",
        port: 8080,
        headers: &headers,
        l4: false,
        amqp: None,
    };
    let workload = Workload {
        namespace: "ns0",
        service: "svc0",
    };
    assert_eq!(
        set.evaluate(&workload, &request).verdict,
        palisade_contract::policy::Verdict::Allow
    );
    let started = Instant::now();
    for _ in 0..iterations {
        std::hint::black_box(set.evaluate(
            std::hint::black_box(&workload),
            std::hint::black_box(&request),
        ));
    }
    started.elapsed().as_nanos() as f64 / iterations as f64
}

/// Runs the scenario into `r`, with its target.
pub(crate) fn scenario(s: &Settings, r: &mut Report) {
    if !s.runs("eval") {
        return;
    }
    r.md.push_str("| policy evaluation | rules in the mesh | ns per decision |\n|---|---:|---:|\n");
    let mut eval_100k = f64::NAN;
    for rules in [10, 1_000, 100_000] {
        let iterations = if s.smoke { 10_000 } else { 2_000_000 };
        let ns = policy_eval(rules, iterations);
        r.md.push_str(&format!(
            "| HTTP request, allowed by rule 9 of 10 | {rules} | {ns:.0} |\n"
        ));
        r.results
            .push(json!({"scenario": "policy-eval", "rules": rules, "ns_per_decision": ns}));
        eval_100k = ns;
    }
    r.target(
        "policy evaluation under 1 µs per decision at 100,000 rules",
        eval_100k < 1000.0,
        format!("{eval_100k:.0} ns"),
    );
}
