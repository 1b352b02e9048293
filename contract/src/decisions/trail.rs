//! The admin audit trail's integrity: the same treatment as a decision log, for the record
//! of who changed the mesh (policy changes, tokens, CA steps).
//!
//! Each entry of the trail has a place `pos` (from 1, no gaps, in the order entries were
//! written), the hash of the entry before it (`prev`, 64 zeros for the first) and its own
//! `hash`: the SHA-256 of [`entry_bytes`], which covers `prev` and every field as stored, so
//! changing, removing or reordering an entry breaks the link to the next. Every few
//! seconds the control plane signs the head with its own certificate (a detached JWS,
//! [`crate::signing`], `typ` [`CHECKPOINT_TYP`], over [`checkpoint_note`]); the checkpoints
//! are stored beside the trail, and `palisade audit verify` walks both.

use serde::Serialize;

/// The `typ` of an admin-trail checkpoint's signature.
pub const CHECKPOINT_TYP: &str = "palisade-admin-checkpoint+jws";

/// The `prev` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One entry as stored (documents as the stored text, so the hash is of what is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry<'a> {
    pub pos: i64,
    pub mesh_version: i64,
    pub seq: i64,
    pub time: i64,
    pub principal: &'a str,
    pub request_id: &'a str,
    pub action: &'a str,
    pub kind: &'a str,
    pub namespace: &'a str,
    pub name: &'a str,
    pub before: Option<&'a str>,
    pub after: Option<&'a str>,
}

/// What an entry's hash covers: `prev`, then the entry as a JSON array of its fields in
/// the order of [`Entry`] (a fixed shape, so writer and verifier cannot read it differently).
pub fn entry_bytes(prev: &str, e: &Entry<'_>) -> Vec<u8> {
    let fields = serde_json::json!([
        prev,
        e.pos,
        e.mesh_version,
        e.seq,
        e.time,
        e.principal,
        e.request_id,
        e.action,
        e.kind,
        e.namespace,
        e.name,
        e.before,
        e.after
    ]);
    serde_json::to_vec(&fields).expect("plain JSON")
}

/// Hex SHA-256 of the entry after `prev`.
pub fn entry_hash(prev: &str, e: &Entry<'_>) -> String {
    super::hex(&super::line_hash(&entry_bytes(prev, e)))
}

/// What a checkpoint signs: the trail's first `pos` entries end in `head`, at `time` (Unix
/// seconds), signed by `signer`.
pub fn checkpoint_note(pos: i64, head: &str, signer: &str, time: i64) -> String {
    format!("palisade.dev/admin-trail/v1\n{pos}\n{head}\n{signer}\n{time}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_field_and_the_link_are_in_the_hash() {
        let e = Entry {
            pos: 1,
            mesh_version: 1,
            seq: 1,
            time: 100,
            principal: "alice",
            request_id: "r1",
            action: "created",
            kind: "AuthorizationPolicy",
            namespace: "shop",
            name: "a",
            before: None,
            after: Some("{\"v\":1}"),
        };
        let h = entry_hash(GENESIS, &e);
        assert_eq!(h.len(), 64);
        assert_ne!(h, entry_hash(&h, &e), "the link counts");
        for changed in [
            Entry {
                principal: "mallory",
                ..e.clone()
            },
            Entry {
                after: Some("{\"v\":2}"),
                ..e.clone()
            },
            Entry {
                after: None,
                ..e.clone()
            },
            Entry {
                pos: 2,
                ..e.clone()
            },
            // A field's text moved into its neighbour reads differently.
            Entry {
                kind: "AuthorizationPolicyshop",
                namespace: "",
                ..e.clone()
            },
        ] {
            assert_ne!(entry_hash(GENESIS, &changed), h, "{changed:?}");
        }
    }
}
