//! Request headers as the sidecar judges them: the framing check, the underscore rule and
//! policy matching of list-valued headers never panic, and a DENY on `x-debug: on` denies
//! every header in which some comma-separated element is `on`.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use palisade_contract::SpiffeId;
use palisade_contract::documents::parse_documents;
use palisade_contract::policy::{DefaultMode, PolicySet, Request, Verdict, Workload};
use palisade_proxy::forwarding::UnderscoreHeaders;
use palisade_proxy::forwarding::{check_framing, underscore_headers};

const POLICIES: &str = r#"
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: all, namespace: shop }
spec: { rules: [ {} ] }
---
apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: no-debug, namespace: shop }
spec:
  action: DENY
  rules: [ { when: [ { key: "request.headers[x-debug]", values: ["on"] } ] } ]
"#;

fuzz_target!(|data: &[u8]| {
    // Lines of `name: value`, as a client would send them.
    let mut headers = HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(name, value);
    }
    let _ = check_framing(&headers);
    static SET: std::sync::OnceLock<PolicySet> = std::sync::OnceLock::new();
    let set = SET.get_or_init(|| {
        let docs = parse_documents(POLICIES).expect("the fixed policies parse");
        PolicySet::new(&docs.authorization, 1, DefaultMode::Deny)
    });
    let source = SpiffeId::parse("spiffe://td/ns/shop/sa/orders").unwrap();
    let verdict = set
        .evaluate(
            &Workload {
                namespace: "shop",
                service: "payments",
            },
            &Request {
                source: Some(&source),
                request_principal: None,
                claims: None,
                method: "GET",
                path: "/",
                port: 8080,
                headers: &headers,
                l4: false,
                amqp: None,
            },
        )
        .verdict;
    let debug_on = headers.get_all("x-debug").iter().any(|v| match v.to_str() {
        Ok(s) => s.split(',').any(|e| e.trim_matches([' ', '\t']) == "on") && !s.contains('"'),
        Err(_) => true,
    });
    if debug_on {
        assert_eq!(verdict, Verdict::Deny, "{headers:?}");
    }
    let mut copy = headers.clone();
    let _ = underscore_headers(&mut copy, UnderscoreHeaders::Drop);
    assert!(copy.keys().all(|k| !k.as_str().contains('_')));
});
