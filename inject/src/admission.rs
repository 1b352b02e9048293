//! The mutating admission webhook's answer: an `admission.k8s.io/v1` `AdmissionReview` in,
//! the same kind out, with the JSON patch from the pod as submitted to the injected pod
//! ([`crate::inject_pod`]), computed by `json-patch`'s diff so that the patch and the
//! offline `palisade inject` can never disagree.
//!
//! Namespaces are chosen by the webhook configuration (`namespaceSelector` on the label
//! `palisade.dev/inject=enabled`); the opt-out annotation, idempotence and host-network
//! pods are decided here. A pod that cannot be injected (not a pod, no containers) is
//! refused rather than admitted without its sidecar: with `failurePolicy: Fail` on the
//! webhook, no pod in an enabled namespace runs outside the mesh by accident.

use base64::Engine;
use serde_json::{Value, json};

use crate::{Outcome, Settings, inject_pod};

/// Why a review could not be answered at all (the HTTP layer answers 400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReviewError {
    #[error("not an admission.k8s.io/v1 AdmissionReview with a request uid")]
    NotAReview,
}

/// The response `AdmissionReview` for `review`.
pub fn respond(review: &Value, settings: &Settings) -> Result<Value, ReviewError> {
    if review.get("apiVersion").and_then(Value::as_str) != Some("admission.k8s.io/v1")
        || review.get("kind").and_then(Value::as_str) != Some("AdmissionReview")
    {
        return Err(ReviewError::NotAReview);
    }
    let request = review.get("request").ok_or(ReviewError::NotAReview)?;
    let uid = request
        .get("uid")
        .and_then(Value::as_str)
        .ok_or(ReviewError::NotAReview)?;
    let response = decide(request, settings);
    let mut out = json!({ "uid": uid });
    match response {
        Decision::Patch(patch) => {
            out["allowed"] = json!(true);
            out["patchType"] = json!("JSONPatch");
            out["patch"] =
                json!(base64::engine::general_purpose::STANDARD.encode(patch.to_string()));
            out["auditAnnotations"] = json!({ "palisade.dev/injection": "injected" });
        }
        Decision::Skip(why) => {
            out["allowed"] = json!(true);
            out["auditAnnotations"] = json!({ "palisade.dev/injection": why });
        }
        Decision::Refuse(why) => {
            out["allowed"] = json!(false);
            out["status"] = json!({
                "code": 400,
                "message": format!("palisade sidecar injection: {why}"),
            });
        }
    }
    Ok(json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": out,
    }))
}

enum Decision {
    Patch(Value),
    Skip(&'static str),
    Refuse(String),
}

fn decide(request: &Value, settings: &Settings) -> Decision {
    let kind = request.pointer("/kind/kind").and_then(Value::as_str);
    let operation = request.get("operation").and_then(Value::as_str);
    if kind != Some("Pod") {
        return Decision::Skip("not a pod");
    }
    if operation != Some("CREATE") {
        return Decision::Skip("only pod creation is mutated");
    }
    if request.get("subResource").and_then(Value::as_str).is_some() {
        return Decision::Skip("a subresource");
    }
    let Some(pod) = request.get("object") else {
        return Decision::Refuse("the request carries no pod".into());
    };
    match inject_pod(pod, settings) {
        Ok(Outcome::Skipped(why)) => Decision::Skip(why),
        Ok(Outcome::Injected(injected)) => {
            let patch = json_patch::diff(pod, &injected);
            Decision::Patch(serde_json::to_value(patch).unwrap_or(Value::Null))
        }
        Err(e) => Decision::Refuse(e.to_string()),
    }
}
