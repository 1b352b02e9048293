//! The policy administration API against a running control plane, on both storage
//! backends: the role matrix over every route, documents with optimistic concurrency, apply
//! and dry-run, located validation errors, the audit trail, restarts, simulate, and the
//! OpenAPI document against the routes.

mod support;

use std::collections::BTreeSet;

use bytes::Bytes;
use http::{Method, StatusCode};
use palisade_control_plane::admin::{OPENAPI, ROUTES, Role};
use serde_json::{Value, json};
use support::{Harness, csr, identity_from};

const POLICY: &str = r#"apiVersion: palisade.dev/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders, namespace: shop }
spec:
  selector: { service: payments }
  rules:
    - from: [ { principals: ["spiffe://palisade.local/ns/shop/sa/orders"] } ]
      to:   [ { methods: ["POST"], paths: ["/charge"] } ]
"#;

const SERVICE: &str = r#"apiVersion: palisade.dev/v1
kind: Service
metadata: { name: payments, namespace: shop }
spec: { identity: "spiffe://palisade.local/ns/shop/sa/payments", endpoints: ["10.0.0.7:15006"] }
"#;

const DOC_PATH: &str = "/v1/namespaces/shop/authorizationpolicies/payments-from-orders";

async fn role_matrix(h: Harness) {
    let roles = [Role::Viewer, Role::Editor, Role::Admin, Role::Auditor];
    let mut tokens: Vec<(Role, String)> = Vec::new();
    for r in roles {
        let name = format!("matrix-{}", r.name());
        tokens.push((r, h.token_for(&name, r.name()).await));
    }
    for (method, template, needed) in ROUTES {
        // Parameters that pass authorization and then fail harmlessly (no CA rotation, no
        // stored change).
        let path = template
            .replace("{step}", "nope")
            .replace("{namespace}", "shop")
            .replace("{plural}", "authorizationpolicies")
            .replace("{name}", "does-not-exist");
        let method: Method = method.parse().unwrap();
        let (status, _, _) = h
            .admin_raw(method.clone(), &path, None, &[], String::new())
            .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {path} without a token"
        );
        for (role, token) in &tokens {
            let (status, _, body) = h
                .admin_raw(method.clone(), &path, Some(token), &[], String::new())
                .await;
            if role.allows(*needed) {
                assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{method} {path} as {}: {status} {body}",
                    role.name()
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {path} as {}: {body}",
                    role.name()
                );
                assert_eq!(
                    body["error"],
                    format!("role {} may not do this", role.name())
                );
            }
        }
    }
}

#[tokio::test]
async fn sqlite_role_matrix_covers_every_route() {
    role_matrix(Harness::start().await).await;
}

#[tokio::test]
async fn postgres_role_matrix_covers_every_route() {
    role_matrix(Harness::start_postgres().await).await;
}

#[test]
fn the_openapi_document_matches_the_routes() {
    let spec: Value = serde_json::from_str(OPENAPI).expect("openapi.json is JSON");
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let role = op["x-palisade-role"].as_str().map(str::to_owned);
            documented.insert((method.to_uppercase(), path.clone(), role));
        }
    }
    let mut routed: BTreeSet<(String, String, Option<String>)> = ROUTES
        .iter()
        .map(|(m, p, r)| (m.to_string(), p.to_string(), Some(r.name().to_owned())))
        .collect();
    routed.insert(("GET".into(), "/healthz".into(), None));
    routed.insert(("GET".into(), "/readyz".into(), None));
    assert_eq!(documented, routed, "openapi.json and admin::ROUTES differ");
}

#[tokio::test]
async fn the_served_openapi_document_is_the_one_in_the_repository() {
    let h = Harness::start().await;
    let (status, body) = h
        .admin(
            Method::GET,
            "/v1/openapi.json",
            Some(&h.admin_token()),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::from_str::<Value>(OPENAPI).unwrap());
}

async fn documents_versions_and_the_audit_trail(mut h: Harness) {
    let editor = h.token_for("erin", "editor").await;
    let viewer = h.token_for("vic", "viewer").await;
    let auditor = h.token_for("aude", "auditor").await;
    let put = |token: String, headers: Vec<(&'static str, String)>, body: String| {
        let h = &h;
        async move {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            h.admin_raw(Method::PUT, DOC_PATH, Some(&token), &headers, body)
                .await
        }
    };

    // Create, then read back with its version as the ETag.
    let (status, headers, created) = put(editor.clone(), vec![], POLICY.to_owned()).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let v1 = created["resourceVersion"].as_i64().unwrap();
    assert_eq!(headers["etag"], format!("\"{v1}\"").as_str());
    assert_eq!(created["updatedBy"], "erin");
    let (status, _, got) = h
        .admin_raw(Method::GET, DOC_PATH, Some(&viewer), &[], String::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["document"]["metadata"]["name"], "payments-from-orders");

    // Create-only on an existing document, and a stale If-Match: 409, nothing lost.
    let changed = POLICY.replace("/charge", "/refund");
    let (status, _, body) = put(
        editor.clone(),
        vec![("if-none-match", "*".into())],
        changed.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _, body) = put(
        editor.clone(),
        vec![("if-match", format!("\"{}\"", v1 - 1))],
        changed.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("read it again"),
        "{body}"
    );
    let (status, _, updated) = put(
        editor.clone(),
        vec![("if-match", format!("\"{v1}\""))],
        changed.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let v2 = updated["resourceVersion"].as_i64().unwrap();
    assert!(v2 > v1);
    // The URL and the document must agree.
    let (status, _, body) = h
        .admin_raw(
            Method::PUT,
            "/v1/namespaces/shop/authorizationpolicies/other-name",
            Some(&editor),
            &[],
            POLICY.to_owned(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Bodies are limited (1 MiB).
    let (status, _, _) = h
        .admin_raw(
            Method::POST,
            "/v1/validate",
            Some(&viewer),
            &[],
            "#".repeat(2 << 20),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    // A viewer may not write.
    let (status, _, _) = put(viewer.clone(), vec![], POLICY.to_owned()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Invalid documents: every problem, located.
    let bad = POLICY.replace("POST", "post").replace("/charge", "charge");
    let (status, _, body) = h
        .admin_raw(Method::POST, "/v1/apply", Some(&editor), &[], bad)
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let details: Vec<&str> = body["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("spec.rules[0].to[0].methods[0]: \"post\"")),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.starts_with("spec.rules[0].to[0].paths[0]: \"charge\"")),
        "{details:?}"
    );
    let (status, _, body) = h
        .admin_raw(
            Method::POST,
            "/v1/validate",
            Some(&viewer),
            &[],
            format!("{POLICY}---\n{SERVICE}"),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["documents"][1]["kind"], "Service");

    // Dry run: what would change, with before and after; nothing stored.
    let (_, _, list) = h
        .admin_raw(
            Method::GET,
            "/v1/resources",
            Some(&viewer),
            &[],
            String::new(),
        )
        .await;
    let version_before = list["meshVersion"].as_i64().unwrap();
    let batch = format!("{POLICY}---\n{SERVICE}");
    let (status, _, dry) = h
        .admin_raw(
            Method::POST,
            "/v1/apply?dryRun=true",
            Some(&editor),
            &[],
            batch.clone(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["dryRun"], true);
    assert_eq!(dry["results"][0]["action"], "updated");
    assert_eq!(
        dry["results"][0]["before"]["spec"]["rules"][0]["to"][0]["paths"][0],
        "/refund"
    );
    assert_eq!(
        dry["results"][0]["after"]["spec"]["rules"][0]["to"][0]["paths"][0],
        "/charge"
    );
    assert_eq!(dry["results"][1]["action"], "created");
    assert_eq!(dry["meshVersion"], version_before);
    // Apply for real: one new mesh version for the batch.
    let (status, _, applied) = h
        .admin_raw(Method::POST, "/v1/apply", Some(&editor), &[], batch.clone())
        .await;
    assert_eq!(status, StatusCode::OK, "{applied}");
    assert_eq!(applied["meshVersion"], version_before + 1);
    // Again: nothing changes, no new version.
    let (_, _, again) = h
        .admin_raw(Method::POST, "/v1/apply", Some(&editor), &[], batch)
        .await;
    assert_eq!(again["meshVersion"], version_before + 1);
    assert_eq!(again["results"][0]["action"], "unchanged");

    let (status, _, list) = h
        .admin_raw(
            Method::GET,
            "/v1/resources?kind=Service",
            Some(&viewer),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["items"].as_array().unwrap().len(), 1);

    // Delete with a stale version, then without.
    let (status, _, _) = h
        .admin_raw(
            Method::DELETE,
            "/v1/namespaces/shop/services/payments",
            Some(&editor),
            &[("if-match", "\"1\"")],
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, _, body) = h
        .admin_raw(
            Method::DELETE,
            "/v1/namespaces/shop/services/payments",
            Some(&editor),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["action"], "deleted");

    // The audit trail: who, what, before and after; auditors only.
    let (status, _, _) = h
        .admin_raw(Method::GET, "/v1/audit", Some(&editor), &[], String::new())
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _, trail) = h
        .admin_raw(
            Method::GET,
            "/v1/audit?principal=erin",
            Some(&auditor),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    // Newest first; read oldest first here.
    let oldest_first: Vec<&Value> = trail["items"].as_array().unwrap().iter().rev().collect();
    let actions: Vec<(&str, &str)> = oldest_first
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["kind"].as_str().unwrap()))
        .collect();
    assert_eq!(
        actions,
        [
            ("created", "AuthorizationPolicy"),
            ("updated", "AuthorizationPolicy"),
            ("updated", "AuthorizationPolicy"),
            ("created", "Service"),
            ("deleted", "Service"),
        ]
    );
    // A page of two, then the rest from its cursor: the same entries, none twice.
    let (_, _, page) = h
        .admin_raw(
            Method::GET,
            "/v1/audit?principal=erin&limit=2",
            Some(&auditor),
            &[],
            String::new(),
        )
        .await;
    let next = page["next"].as_str().unwrap().to_owned();
    let (_, _, rest) = h
        .admin_raw(
            Method::GET,
            &format!("/v1/audit?principal=erin&cursor={next}"),
            Some(&auditor),
            &[],
            String::new(),
        )
        .await;
    let paged: Vec<&Value> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["items"].as_array().unwrap())
        .collect();
    assert_eq!(paged.len(), 5);
    assert_eq!(
        paged.iter().rev().copied().collect::<Vec<_>>(),
        oldest_first
    );
    assert!(rest.get("next").is_none(), "{rest}");
    let second = oldest_first[1];
    assert_eq!(
        second["before"]["spec"]["rules"][0]["to"][0]["paths"][0],
        "/charge"
    );
    assert_eq!(
        second["after"]["spec"]["rules"][0]["to"][0]["paths"][0],
        "/refund"
    );
    assert!(!second["requestId"].as_str().unwrap().is_empty());

    // Join tokens are administrative actions too: recorded, without the token itself.
    let token = h.join_token("shop", "orders").await;
    let (_, _, trail) = h
        .admin_raw(
            Method::GET,
            "/v1/audit?kind=JoinToken",
            Some(&auditor),
            &[],
            String::new(),
        )
        .await;
    let entry = &trail["items"][0];
    assert_eq!(entry["action"], "created");
    assert_eq!(
        entry["after"]["spiffeId"],
        "spiffe://palisade.local/ns/shop/sa/orders"
    );
    assert!(
        !trail.to_string().contains(&token),
        "the trail must not hold the token"
    );

    // Everything survives a restart, admin tokens included.
    h.restart().await;
    let (status, _, got) = h
        .admin_raw(Method::GET, DOC_PATH, Some(&viewer), &[], String::new())
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        got["document"]["spec"]["rules"][0]["to"][0]["paths"][0],
        "/charge"
    );
}

#[tokio::test]
async fn sqlite_documents_versions_and_the_audit_trail() {
    documents_versions_and_the_audit_trail(Harness::start().await).await;
}

#[tokio::test]
async fn postgres_documents_versions_and_the_audit_trail() {
    documents_versions_and_the_audit_trail(Harness::start_postgres().await).await;
}

#[tokio::test]
async fn simulate_explains_the_decision() {
    let h = Harness::start().await;
    let admin = h.admin_token();
    let (status, _, body) = h
        .admin_raw(
            Method::POST,
            "/v1/apply",
            Some(&admin),
            &[],
            POLICY.to_owned(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let simulate = |request: Value| {
        let h = &h;
        let admin = admin.clone();
        async move {
            h.admin_raw(
                Method::POST,
                "/v1/simulate",
                Some(&admin),
                &[],
                request.to_string(),
            )
            .await
        }
    };
    let call = |sa: &str, method: &str, path: &str| {
        json!({"source": format!("spiffe://palisade.local/ns/shop/sa/{sa}"),
               "namespace": "shop", "service": "payments",
               "http": {"method": method, "path": path}})
    };
    let (status, _, allowed) = simulate(call("orders", "POST", "/x/../charge")).await;
    assert_eq!(status, StatusCode::OK, "{allowed}");
    assert_eq!(allowed["decision"], "allow");
    assert_eq!(allowed["normalizedPath"], "/charge");
    assert_eq!(
        allowed["detail"]["basis"]["policy"]["name"],
        "payments-from-orders"
    );
    let (_, _, denied) = simulate(call("rogue", "GET", "/charge")).await;
    assert_eq!(denied["decision"], "deny");
    let rule = &denied["candidates"][0]["rules"][0];
    assert_eq!(rule["matched"], false);
    assert_eq!(rule["failed"], json!(["from", "to"]));
    // Against a proposed, unsaved policy: DENY beats the stored ALLOW.
    let mut proposed = call("orders", "POST", "/charge");
    proposed["proposed"] = json!(
        "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: freeze, namespace: shop }\nspec:\n  action: DENY\n  rules: [ {} ]\n"
    );
    let (_, _, frozen) = simulate(proposed).await;
    assert_eq!(frozen["decision"], "deny");
    assert_eq!(frozen["detail"]["basis"]["policy"]["name"], "freeze");
    // Nothing was stored by it.
    let (_, _, list) = h
        .admin_raw(
            Method::GET,
            "/v1/resources",
            Some(&admin),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    // AMQP operations, every routing key judged.
    let amqp_policy = "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: orders-publish, namespace: shop }\nspec:\n  selector: { service: orders }\n  rules: [ { to: [ { amqp: { operations: [publish], exchanges: [shop.events], routingKeys: [\"order.*\"] } } ] } ]\n";
    let (status, _, body) = h
        .admin_raw(
            Method::POST,
            "/v1/apply",
            Some(&admin),
            &[],
            amqp_policy.to_owned(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let publish = |keys: Value| {
        json!({"source": "spiffe://palisade.local/ns/shop/sa/orders", "namespace": "shop",
               "service": "orders", "amqp": {"operation": "publish", "exchange": "shop.events",
               "routingKeys": keys}})
    };
    let (_, _, ok) = simulate(publish(json!(["order.created"]))).await;
    assert_eq!(ok["decision"], "allow", "{ok}");
    let (_, _, cc) = simulate(publish(json!(["order.created", "payment.secret"]))).await;
    assert_eq!(cc["decision"], "deny", "{cc}");

    // A path the sidecar would refuse is a 400 here too.
    let (status, _, body) = simulate(call("orders", "GET", "/a%2Fb")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn a_change_through_one_postgres_replica_reaches_sidecars_of_another() {
    let a = Harness::start_postgres().await;
    let url = a.config.database_url.clone();
    let b = Harness::start_with(|c| c.database_url = url).await;
    // A sidecar of replica B, waiting for configuration newer than the current version.
    let token = b.join_token("shop", "payments").await;
    let (key, request) = csr();
    let (status, issued) = b.issue(Some(&token), &request).await;
    assert_eq!(status, StatusCode::OK, "{issued}");
    let identity = identity_from(&issued, &key);
    let (_, list) = b
        .admin(Method::GET, "/v1/resources", Some(&b.admin_token()), None)
        .await;
    let version = list["meshVersion"].as_i64().unwrap();
    let path = format!("/v1/config?version={version}&applied={version}&instance=t1");
    let poll = b.sidecar_request(
        Method::GET,
        &path,
        None,
        Some(identity.clone()),
        String::new(),
    );
    let write = async {
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let (status, _, body) = a
            .admin_raw(
                Method::POST,
                "/v1/apply",
                Some(&a.admin_token()),
                &[],
                POLICY.to_owned(),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        std::time::Instant::now()
    };
    let ((status, config), written_at) = tokio::join!(poll, write);
    let delay = written_at.elapsed();
    assert_eq!(status, StatusCode::OK, "{config}");
    assert_eq!(config["version"], version + 1);
    assert_eq!(
        config["documents"][0]["metadata"]["name"],
        "payments-from-orders"
    );
    assert!(
        config["trustBundle"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    eprintln!("replica B's sidecar heard of replica A's change after {delay:?}");
    assert!(delay < std::time::Duration::from_secs(2), "{delay:?}");
    // Without a client certificate there is no configuration.
    let (status, _) = b
        .sidecar_request(
            Method::GET,
            "/v1/config?version=0&applied=0&instance=x",
            None,
            None,
            String::new(),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn operators_can_sign_in_with_an_oidc_provider() {
    use palisade_contract::jwt::testing::{TestIssuer, now};
    let idp = TestIssuer::new("sso-1");
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("sso.jwks");
    std::fs::write(&jwks, idp.jwks.to_string()).unwrap();
    let h = Harness::start_with(|c| {
        c.admin_oidc_issuer = Some("https://sso.example".into());
        c.admin_oidc_jwks = Some(jwks);
    })
    .await;
    let token = |patch: Value| {
        let t = now();
        let mut claims = json!({"iss": "https://sso.example", "sub": "dana", "aud": "palisade",
                                "exp": t + 300, "palisade_role": "editor"});
        for (k, v) in patch.as_object().unwrap() {
            claims[k] = v.clone();
        }
        idp.sign(&claims)
    };
    let (status, _, body) = h
        .admin_raw(
            Method::POST,
            "/v1/apply",
            Some(&token(json!({}))),
            &[],
            POLICY.to_owned(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, _, trail) = h
        .admin_raw(
            Method::GET,
            "/v1/audit",
            Some(&h.admin_token()),
            &[],
            String::new(),
        )
        .await;
    assert_eq!(trail["items"][0]["principal"], "oidc:dana");
    // Editors may not create join tokens; bad tokens are 401.
    let (status, _) = h
        .admin(
            Method::POST,
            "/v1/join-tokens",
            Some(&token(json!({}))),
            Some(json!({"namespace": "shop", "serviceAccount": "x"})),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    for bad in [
        json!({"aud": "other"}),
        json!({"exp": now() - 60}),
        json!({"palisade_role": "root"}),
        json!({"sub": ""}),
    ] {
        let (status, _) = h
            .admin(
                Method::GET,
                "/v1/resources",
                Some(&token(bad.clone())),
                None,
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{bad}");
    }
    let forged = TestIssuer::new("sso-1").sign(&json!({"iss": "https://sso.example", "sub": "eve",
        "aud": "palisade", "exp": now() + 300, "palisade_role": "admin"}));
    let (status, _) = h
        .admin(Method::GET, "/v1/resources", Some(&forged), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn operators_can_authenticate_with_a_client_certificate() {
    let ops = "spiffe://palisade.local/ns/palisade-system/sa/ops";
    let h = Harness::start_with(|c| {
        c.admin_tls = true;
        c.admin_spiffe_id = vec![format!("{ops}=editor").parse().unwrap()];
    })
    .await;
    let cert_for = |ns: &'static str, sa: &'static str| {
        let h = &h;
        async move {
            let token = h.token_for(&format!("setup-{ns}-{sa}"), "admin").await;
            let (status, body) = h
                .tls_request(
                    h.cp().admin_addr,
                    Method::POST,
                    "/v1/join-tokens",
                    Some(&token),
                    None,
                    json!({"namespace": ns, "serviceAccount": sa}).to_string(),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            let (key, request) = csr();
            let (status, issued) = h.issue(body["token"].as_str(), &request).await;
            assert_eq!(status, StatusCode::OK, "{issued}");
            identity_from(&issued, &key)
        }
    };
    let operator = cert_for("palisade-system", "ops").await;
    let stranger = cert_for("shop", "orders").await;
    let admin_addr = h.cp().admin_addr;
    let call = |identity, method: Method, path: &'static str, body: String| {
        let h = &h;
        async move {
            h.tls_request(admin_addr, method, path, None, identity, body)
                .await
        }
    };
    let (status, body) = call(
        Some(operator.clone()),
        Method::POST,
        "/v1/apply",
        POLICY.to_owned(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, trail) = h
        .tls_request(
            admin_addr,
            Method::GET,
            "/v1/audit?kind=AuthorizationPolicy",
            Some(&h.admin_token()),
            None,
            String::new(),
        )
        .await;
    assert_eq!(trail["items"][0]["principal"], ops);
    // The role is the one configured for the ID: an editor may not create join tokens.
    let (status, _) = call(
        Some(operator),
        Method::POST,
        "/v1/join-tokens",
        json!({"namespace": "shop", "serviceAccount": "x"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // A mesh certificate that is not listed, or none: not authenticated.
    for identity in [Some(stranger), None] {
        let (status, _) = call(identity, Method::GET, "/v1/resources", String::new()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }
}

#[tokio::test]
async fn readiness_follows_the_database() {
    let h = Harness::start_postgres().await;
    let (status, _, body) = h
        .admin_raw(Method::GET, "/readyz", None, &[], String::new())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.as_str().unwrap().starts_with("ready"), "{body}");
    // The database loses what the replica needs: not ready, with the reason; alive still.
    let url = h.config.database_url.clone().unwrap();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    sqlx::query("DROP TABLE mesh_version")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let (status, _, body) = h
        .admin_raw(Method::GET, "/readyz", None, &[], String::new())
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // As every error of this API: the documented JSON.
    assert!(
        body["error"].as_str().unwrap().contains("database"),
        "{body}"
    );
    assert_eq!(body["details"], json!([]), "{body}");
    let (status, _, _) = h
        .admin_raw(Method::GET, "/healthz", None, &[], String::new())
        .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn kubernetes_service_accounts_named_with_a_role_use_the_admin_api() {
    let keydir = tempfile::tempdir().unwrap();
    let (key, jwks) = support::k8s_setup(keydir.path());
    let h = Harness::start_with(|c| {
        c.k8s_issuer = Some(support::K8S_ISSUER.into());
        c.k8s_jwks = Some(jwks);
        c.admin_k8s_service_account = vec![
            "shop/mesh-config=editor".parse().unwrap(),
            "ops/reader=viewer".parse().unwrap(),
        ];
    })
    .await;
    let token = |ns: &str, sa: &str, aud: &str| {
        let mut claims = support::k8s_claims(support::K8S_ISSUER, ns, sa);
        claims["aud"] = serde_json::json!([aud]);
        support::k8s_token(&key, "k1", &claims)
    };
    let policy = "apiVersion: palisade.dev/v1\nkind: AuthorizationPolicy\nmetadata: { name: p, namespace: shop }\nspec: { selector: { service: payments } }\n".to_owned();
    let apply = async |t: &str| {
        let (status, _, body) = h
            .admin_raw(
                Method::POST,
                "/v1/apply",
                Some(t),
                &[("content-type", "application/yaml")],
                policy.clone(),
            )
            .await;
        (status, body)
    };
    // The editor account applies; the change is recorded under its Kubernetes name.
    let (status, body) = apply(&token("shop", "mesh-config", "palisade-admin")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (_, trail) = h
        .admin(Method::GET, "/v1/audit", Some(&h.admin_token()), None)
        .await;
    assert!(
        trail.to_string().contains("k8s:shop/mesh-config"),
        "{trail}"
    );
    // A viewer account may read but not write.
    let viewer = token("ops", "reader", "palisade-admin");
    let (status, _) = h
        .admin(Method::GET, "/v1/resources", Some(&viewer), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = apply(&viewer).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // An account without a role, and a bootstrap token (audience palisade) of the right
    // account, are not admin credentials.
    for (t, why) in [
        (
            token("shop", "orders", "palisade-admin"),
            "an account with no role",
        ),
        (
            token("shop", "mesh-config", "palisade"),
            "a bootstrap token",
        ),
    ] {
        let (status, body) = apply(&t).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{why}: {body}");
    }
    // Malformed flags are refused with the reason.
    for (bad, reason) in [
        ("shop=editor", "NAMESPACE/SERVICE_ACCOUNT=ROLE"),
        ("shop/x=root", "not viewer, editor, admin or auditor"),
        ("Shop/x=viewer", "not a namespace"),
    ] {
        let e = bad
            .parse::<palisade_control_plane::admin::K8sAdmin>()
            .unwrap_err();
        assert!(e.contains(reason), "{bad}: {e}");
    }
}

/// (method, path, token, headers, body, the status expected).
type ErrorCase<'a> = (
    Method,
    &'a str,
    Option<&'a str>,
    Vec<(&'a str, &'a str)>,
    Bytes,
    StatusCode,
);

#[tokio::test]
async fn every_error_is_the_documented_json_with_the_right_status() {
    let h = Harness::start().await;
    let admin = h.admin_token();
    let big = format!(
        "{{\"namespace\": \"shop\", \"serviceAccount\": \"{}\"}}",
        "a".repeat(2 * 1024 * 1024)
    );
    let cases: Vec<ErrorCase> = vec![
        // Too large, as JSON: 413, not 400.
        (
            Method::POST,
            "/v1/join-tokens",
            Some(&admin),
            vec![],
            Bytes::from(big.clone()),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        (
            Method::POST,
            "/v1/apply",
            Some(&admin),
            vec![],
            Bytes::from(big),
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
        // Not JSON where JSON is required: 415.
        (
            Method::POST,
            "/v1/join-tokens",
            Some(&admin),
            vec![("content-type", "text/plain")],
            Bytes::from_static(b"x"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        // JSON of the wrong shape: 400 (axum says 422).
        (
            Method::POST,
            "/v1/simulate",
            Some(&admin),
            vec![],
            Bytes::from_static(b"{\"source\": 1}"),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/join-tokens",
            Some(&admin),
            vec![],
            Bytes::from_static(b"{\"namespace\": []}"),
            StatusCode::BAD_REQUEST,
        ),
        // A mesh version that never was, and a past version with proposed documents.
        (
            Method::POST,
            "/v1/simulate",
            Some(&admin),
            vec![],
            Bytes::from_static(
                br#"{"source": "spiffe://palisade.local/ns/shop/sa/orders", "namespace": "shop", "service": "payments", "http": {"method": "GET", "path": "/"}, "atVersion": 99}"#,
            ),
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            "/v1/simulate",
            Some(&admin),
            vec![],
            Bytes::from_static(
                br#"{"source": "spiffe://palisade.local/ns/shop/sa/orders", "namespace": "shop", "service": "payments", "http": {"method": "GET", "path": "/"}, "atVersion": 1, "proposed": ""}"#,
            ),
            StatusCode::BAD_REQUEST,
        ),
        // Unknown query parameters.
        (
            Method::GET,
            "/v1/resources?bogus=1",
            Some(&admin),
            vec![],
            Bytes::new(),
            StatusCode::BAD_REQUEST,
        ),
        // A body that is not UTF-8.
        (
            Method::POST,
            "/v1/validate",
            Some(&admin),
            vec![("content-type", "application/yaml")],
            Bytes::from_static(b"\xff\xfe"),
            StatusCode::BAD_REQUEST,
        ),
        // No token, a bad one.
        (
            Method::GET,
            "/v1/ca",
            None,
            vec![],
            Bytes::new(),
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/v1/ca",
            Some("garbage"),
            vec![],
            Bytes::new(),
            StatusCode::UNAUTHORIZED,
        ),
        // Unknown rotation steps, kinds and routes, and a method a route lacks.
        (
            Method::POST,
            "/v1/ca/rotation/sideways",
            Some(&admin),
            vec![],
            Bytes::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/namespaces/shop/pods/x",
            Some(&admin),
            vec![],
            Bytes::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/v1/nothing-here",
            Some(&admin),
            vec![],
            Bytes::new(),
            StatusCode::NOT_FOUND,
        ),
        (
            Method::DELETE,
            "/v1/ca",
            Some(&admin),
            vec![],
            Bytes::new(),
            StatusCode::METHOD_NOT_ALLOWED,
        ),
    ];
    for (method, path, token, headers, body, want) in cases {
        let (status, response_headers, json) = h
            .admin_raw(method.clone(), path, token, &headers, body)
            .await;
        assert_eq!(status, want, "{method} {path}: {json}");
        assert_eq!(
            response_headers[http::header::CONTENT_TYPE],
            "application/json",
            "{method} {path}"
        );
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{method} {path}: {json}"
        );
        assert!(json["details"].is_array(), "{method} {path}: {json}");
        if want == StatusCode::METHOD_NOT_ALLOWED {
            assert!(response_headers.contains_key(http::header::ALLOW));
        }
        if want == StatusCode::UNAUTHORIZED {
            assert!(response_headers.contains_key(http::header::WWW_AUTHENTICATE));
        }
    }
}
